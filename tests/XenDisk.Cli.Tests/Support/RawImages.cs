namespace XenDisk.Cli.Tests.Support;

/// <summary>Raw base images whose every sector says which sector it is, for checking what a command copied where.</summary>
public static class RawImages
{
    /// <summary>A raw file of <paramref name="size"/> bytes where every 512-byte sector holds a byte derived from its number (never all zeros).</summary>
    public static string RawBase(this TempDirectory directory, string name, long size, byte? fill = null)
    {
        string path = directory.File(name);
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
}
