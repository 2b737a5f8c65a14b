namespace XenDisk.Storage.Tests.Support;

public static class Patterns
{
    /// <summary>Deterministic bytes that differ per seed and per position, so misplaced data shows.</summary>
    public static byte[] Bytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
