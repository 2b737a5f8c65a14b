using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Storage.Tests.Iscsi;

/// <summary>A scratch directory and a tgtd over files in it, for one test.</summary>
internal sealed class IscsiRig : IDisposable
{
    public const string Iqn = "iqn.2026-12.org.xendisk.test:disk";

    private IscsiRig(string directory, TgtdTarget target)
    {
        Directory = directory;
        Target = target;
    }

    public string Directory { get; }

    public TgtdTarget Target { get; }

    public string LunPath(int lun) => Path.Combine(Directory, $"lun{lun}.img");

    public string Url(int lun = 1) => Target.Url(Iqn, lun);

    /// <summary>A target with one LUN per size (LUN 1, 2, ...), each a sparse file filled with a known pattern where asked.</summary>
    public static IscsiRig Start(long[] sizes, bool thin = false, Func<TgtdTargetDefinition, TgtdTargetDefinition>? configure = null)
    {
        string directory = Path.Combine(Path.GetTempPath(), "xendisk-iscsi-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(directory);
        List<TgtdLun> luns = [];
        for (int i = 0; i < sizes.Length; i++)
        {
            string path = Path.Combine(directory, $"lun{i + 1}.img");
            using (FileStream file = File.Create(path))
            {
                file.SetLength(sizes[i]);
            }
            luns.Add(new TgtdLun(i + 1, path, thin));
        }
        TgtdTargetDefinition definition = new(Iqn, luns);
        definition = configure?.Invoke(definition) ?? definition;
        try
        {
            return new IscsiRig(directory, TgtdTarget.Start(directory, definition));
        }
        catch
        {
            System.IO.Directory.Delete(directory, recursive: true);
            throw;
        }
    }

    public void Dispose()
    {
        Target.Dispose();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
