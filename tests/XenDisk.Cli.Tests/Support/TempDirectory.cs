namespace XenDisk.Cli.Tests.Support;

/// <summary>A fresh directory on the real disk (direct I/O needs a file system that allows it), removed on dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        string root = Directory.Exists("/var/tmp") ? "/var/tmp" : System.IO.Path.GetTempPath();
        Path = System.IO.Path.Combine(root, "xendisk-cli-tests-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>A raw file of <paramref name="size"/> bytes where every 512-byte sector holds a byte derived from its number (never all zeros).</summary>
    public string RawBase(string name, long size, byte? fill = null)
    {
        string path = File(name);
        byte[] block = new byte[1 << 20];
        using FileStream stream = new(path, FileMode.CreateNew, FileAccess.Write);
        for (long at = 0; at < size; at += block.Length)
        {
            int length = (int)Math.Min(block.Length, size - at);
            for (int sector = 0; sector < length / 512; sector++)
            {
                block.AsSpan(sector * 512, 512).Fill(fill ?? SectorByte((at / 512) + sector));
            }
            stream.Write(block, 0, length);
        }
        return path;
    }

    /// <summary>The byte every sector of <see cref="RawBase"/> holds: 1..251, never 0.</summary>
    public static byte SectorByte(long sector) => (byte)(sector % 251 + 1);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a leftover temp directory is not a test failure.
        }
    }
}
