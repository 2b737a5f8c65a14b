using Tmds.Linux;

namespace XenDisk.Xen.Simulated.XenStore;

/// <summary>What a tree operation touched: lets the live store fire watches and a transaction record its conflict set.</summary>
internal interface IXenStoreTreeObserver
{
    /// <summary>A path was read or listed (or probed and found missing).</summary>
    void Accessed(string path);

    /// <summary>
    /// A node was written, created or had its permissions changed. <paramref name="announce"/> is
    /// false for the parents a write creates on its way: xenstored fires watches once, for the
    /// path that was written.
    /// </summary>
    void Modified(XenStoreNode node, bool created, bool announce);

    /// <summary>A subtree is about to be detached; <paramref name="root"/> still carries its children.</summary>
    void Removed(XenStoreNode root);
}

/// <summary>
/// The xenstore operations over one tree, with xenstored's permission rules
/// (tools/xenstored/core.c): read needs READ on the node, write/rm need WRITE on the node (or on
/// the nearest existing ancestor when creating), new nodes inherit their parent's permissions
/// except that a node created by an unprivileged domain is owned by that domain, and a missing
/// node is reported as EACCES when the caller could not read its nearest existing ancestor.
/// The live store and every transaction (a private copy) run the same code.
/// </summary>
internal sealed class XenStoreTree
{
    public XenStoreTree(XenStoreNode root)
    {
        Root = root;
    }

    public XenStoreNode Root { get; }

    public static XenStoreTree CreateEmpty() =>
        new(new XenStoreNode("/", string.Empty, null, [new XenStorePermission(0, XenStoreAccess.None)]));

    public XenStoreTree Clone() => new(Root.DeepClone(null));

    public XenStoreNode? Find(string path)
    {
        if (path == "/")
        {
            return Root;
        }

        XenStoreNode node = Root;
        int start = 1;
        while (start <= path.Length)
        {
            int slash = path.IndexOf('/', start);
            if (slash < 0)
            {
                slash = path.Length;
            }

            if (!node.Children.TryGetValue(path[start..slash], out XenStoreNode? child))
            {
                return null;
            }

            node = child;
            start = slash + 1;
        }

        return node;
    }

    public string? Read(uint domainId, string path, IXenStoreTreeObserver observer)
    {
        observer.Accessed(path);
        XenStoreNode? node = FindReadable("read", domainId, path);
        return node?.Value;
    }

    public IReadOnlyList<string>? Directory(uint domainId, string path, IXenStoreTreeObserver observer)
    {
        observer.Accessed(path);
        XenStoreNode? node = FindReadable("directory", domainId, path);
        return node is null ? null : [.. node.Children.Keys];
    }

    public IReadOnlyList<XenStorePermission>? GetPermissions(uint domainId, string path, IXenStoreTreeObserver observer)
    {
        observer.Accessed(path);
        XenStoreNode? node = FindReadable("get_permissions", domainId, path);
        return node is null ? null : [.. node.Permissions];
    }

    public void Write(uint domainId, string path, string value, IXenStoreTreeObserver observer)
    {
        if (value.Length > XenStorePath.MaxValueLength)
        {
            throw new XenStoreException("write", path, LibC.E2BIG);
        }

        XenStoreNode? node = Find(path);
        if (node is null)
        {
            node = Create("write", domainId, path, observer);
            node.Value = value;
            observer.Modified(node, created: true, announce: true);
            return;
        }

        RequireAccess("write", domainId, node, XenStoreAccess.Write);
        node.Value = value;
        observer.Modified(node, created: false, announce: true);
    }

    public void Mkdir(uint domainId, string path, IXenStoreTreeObserver observer)
    {
        XenStoreNode? node = Find(path);
        if (node is not null)
        {
            // xenstored answers OK without touching (or announcing) an existing node.
            RequireAccess("mkdir", domainId, node, XenStoreAccess.Write);
            observer.Accessed(path);
            return;
        }

        node = Create("mkdir", domainId, path, observer);
        observer.Modified(node, created: true, announce: true);
    }

    public void Remove(uint domainId, string path, IXenStoreTreeObserver observer)
    {
        if (path == "/")
        {
            throw new XenStoreException("rm", path, LibC.EINVAL);
        }

        XenStoreNode? node = Find(path);
        if (node is null)
        {
            observer.Accessed(path);
            return;
        }

        RequireAccess("rm", domainId, node, XenStoreAccess.Write);
        observer.Removed(node);
        node.Parent!.Children.Remove(node.Name);
    }

    public void SetPermissions(uint domainId, string path, IReadOnlyList<XenStorePermission> permissions, IXenStoreTreeObserver observer)
    {
        if (permissions.Count == 0)
        {
            throw new XenStoreException("set_permissions", path, LibC.EINVAL);
        }

        XenStoreNode node = FindReadable("set_permissions", domainId, path)
            ?? throw new XenStoreException("set_permissions", path, LibC.ENOENT);

        // Only dom0 and the owner may change permissions, and an unprivileged owner cannot give the node away.
        if (domainId != 0 && node.Permissions[0].DomainId != domainId)
        {
            throw new XenStoreException("set_permissions", path, LibC.EACCES);
        }

        if (domainId != 0 && permissions[0].DomainId != domainId)
        {
            throw new XenStoreException("set_permissions", path, LibC.EPERM);
        }

        node.Permissions = [.. permissions];
        observer.Modified(node, created: false, announce: true);
    }

    private XenStoreNode Create(string operation, uint domainId, string path, IXenStoreTreeObserver observer)
    {
        // Find the nearest existing ancestor: the caller needs WRITE there.
        var missing = new Stack<string>();
        string current = path;
        XenStoreNode? ancestor;
        while ((ancestor = Find(current)) is null)
        {
            missing.Push(current);
            current = XenStorePath.Parent(current);
        }

        observer.Accessed(ancestor.Path);
        RequireAccess(operation, domainId, ancestor, XenStoreAccess.Write);
        XenStoreNode parent = ancestor;
        while (missing.Count > 0)
        {
            string childPath = missing.Pop();
            XenStorePermission[] inherited = [.. parent.Permissions];
            if (domainId != 0)
            {
                inherited[0] = inherited[0] with { DomainId = domainId };
            }

            var child = new XenStoreNode(childPath, childPath[(childPath.LastIndexOf('/') + 1)..], parent, inherited);
            parent.Children.Add(child.Name, child);
            if (missing.Count > 0)
            {
                observer.Modified(child, created: true, announce: false);
            }

            parent = child;
        }

        return parent;
    }

    private XenStoreNode? FindReadable(string operation, uint domainId, string path)
    {
        XenStoreNode? node = Find(path);
        if (node is not null)
        {
            RequireAccess(operation, domainId, node, XenStoreAccess.Read);
            return node;
        }

        // errno_from_parents: do not reveal that a node is missing below something the caller cannot read.
        string current = path;
        XenStoreNode? ancestor;
        do
        {
            current = XenStorePath.Parent(current);
            ancestor = Find(current);
        }
        while (ancestor is null);

        if ((XenStoreNode.AccessFor(domainId, ancestor.Permissions) & XenStoreAccess.Read) == 0)
        {
            throw new XenStoreException(operation, path, LibC.EACCES);
        }

        return null;
    }

    private static void RequireAccess(string operation, uint domainId, XenStoreNode node, XenStoreAccess needed)
    {
        if ((XenStoreNode.AccessFor(domainId, node.Permissions) & needed) != needed)
        {
            throw new XenStoreException(operation, node.Path, LibC.EACCES);
        }
    }
}
