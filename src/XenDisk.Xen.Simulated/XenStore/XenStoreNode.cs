namespace XenDisk.Xen.Simulated.XenStore;

/// <summary>One xenstore node: a value, a permission list and children (kept in name order).</summary>
internal sealed class XenStoreNode
{
    public XenStoreNode(string path, string name, XenStoreNode? parent, XenStorePermission[] permissions)
    {
        Path = path;
        Name = name;
        Parent = parent;
        Permissions = permissions;
    }

    public string Path { get; }

    public string Name { get; }

    public XenStoreNode? Parent { get; }

    public string Value { get; set; } = string.Empty;

    /// <summary>First entry: owner and the access of every domain not listed (XS_PERM_* semantics).</summary>
    public XenStorePermission[] Permissions { get; set; }

    public SortedDictionary<string, XenStoreNode> Children { get; } = new(StringComparer.Ordinal);

    public XenStoreNode DeepClone(XenStoreNode? parent)
    {
        var copy = new XenStoreNode(Path, Name, parent, Permissions) { Value = Value };
        foreach (XenStoreNode child in Children.Values)
        {
            copy.Children.Add(child.Name, child.DeepClone(copy));
        }

        return copy;
    }

    public void CollectSubtree(List<XenStoreNode> into)
    {
        into.Add(this);
        foreach (XenStoreNode child in Children.Values)
        {
            child.CollectSubtree(into);
        }
    }

    /// <summary>
    /// xenstored's perm_for_conn: dom0 and the owner have full access; a domain listed after the
    /// first entry gets its listed access; everyone else gets the first entry's access.
    /// </summary>
    public static XenStoreAccess AccessFor(uint domainId, XenStorePermission[] permissions)
    {
        if (domainId == 0 || permissions.Length == 0 || permissions[0].DomainId == domainId)
        {
            return XenStoreAccess.Both;
        }

        for (int i = 1; i < permissions.Length; i++)
        {
            if (permissions[i].DomainId == domainId)
            {
                return permissions[i].Access;
            }
        }

        return permissions[0].Access;
    }
}
