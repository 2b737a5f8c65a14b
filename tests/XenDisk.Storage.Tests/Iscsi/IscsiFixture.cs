using XenDisk.Storage.Iscsi;
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

    /// <summary>
    /// <paramref name="threads"/> writers each write <paramref name="writes"/> 4 KiB blocks of their own
    /// (block t * writes + i holds <see cref="IscsiBlockDeviceTests.Pattern"/> with that number as
    /// seed); halfway through, with every writer mid-stream, the target is killed and started again.
    /// Returns each write's status once all have their answer; fails with <paramref name="hang"/> when
    /// one has none within <paramref name="limit"/>.
    /// </summary>
    public IoStatus[,] WriteThroughARestart(IscsiBlockDevice device, int threads, int writes, TimeSpan limit, string hang)
    {
        using Barrier halfway = new(threads + 1);
        IoStatus[,] results = new IoStatus[threads, writes];
        Task[] writers = Enumerable.Range(0, threads).Select(t => Task.Factory.StartNew(() =>
        {
            for (int i = 0; i < writes; i++)
            {
                if (i == writes / 2)
                {
                    halfway.SignalAndWait();
                }
                results[t, i] = device.WriteAt(((long)t * writes + i) * 4096, IscsiBlockDeviceTests.Pattern(4096, t * writes + i));
            }
        }, TaskCreationOptions.LongRunning)).ToArray();
        halfway.SignalAndWait();
        Target.Kill();
        Target.Start();
        Assert.True(Task.WaitAll(writers, limit), hang);
        return results;
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
