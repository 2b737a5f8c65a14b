namespace XenDisk.TestSupport;

/// <summary>
/// A fresh directory for one test (or one fixture), removed on dispose. It lives under /var/tmp, on the
/// real disk, because direct I/O needs a file system that allows it; elsewhere under the temp path.
/// </summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory(string prefix = "xendisk-test-", string? root = null)
    {
        root ??= Directory.Exists("/var/tmp") ? "/var/tmp" : System.IO.Path.GetTempPath();
        Path = System.IO.Path.Combine(root, prefix + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a leftover temporary directory is not a test failure.
        }
    }
}
