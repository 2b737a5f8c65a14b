namespace XenDisk.Storage;

/// <summary>
/// Conveniences for tests and tools that hold data in managed memory. Each call pins the span for
/// the duration of the call and passes it as a single <see cref="IoBuffer"/>; the data plane
/// itself builds scatter lists from grant mappings and does not use these.
/// </summary>
public static unsafe class BlockDeviceExtensions
{
    /// <summary>Reads <c>destination.Length</c> bytes at <paramref name="offset"/>.</summary>
    public static IoStatus ReadAt(this IBlockDevice device, long offset, Span<byte> destination)
    {
        fixed (byte* pointer = destination)
        {
            IoBuffer buffer = new((nint)pointer, destination.Length);
            return device.Read(offset, new ReadOnlySpan<IoBuffer>(in buffer));
        }
    }

    /// <summary>Writes <paramref name="source"/> at <paramref name="offset"/>.</summary>
    public static IoStatus WriteAt(this IBlockDevice device, long offset, ReadOnlySpan<byte> source)
    {
        fixed (byte* pointer = source)
        {
            IoBuffer buffer = new((nint)pointer, source.Length);
            return device.Write(offset, new ReadOnlySpan<IoBuffer>(in buffer));
        }
    }
}
