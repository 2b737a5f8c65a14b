using System.Runtime.InteropServices;
using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>Operations on a caller's scatter list (a guest request's segments): slicing by byte range and filling.</summary>
internal static unsafe class ScatterList
{
    /// <summary>
    /// Writes into <paramref name="destination"/> the buffers covering bytes [offset, offset + length)
    /// of <paramref name="buffers"/>; returns how many. The destination needs at most
    /// <c>buffers.Length</c> entries.
    /// </summary>
    public static int Slice(ReadOnlySpan<IoBuffer> buffers, long offset, long length, Span<IoBuffer> destination)
    {
        int count = 0;
        long position = 0;
        long end = offset + length;
        foreach (IoBuffer buffer in buffers)
        {
            long bufferEnd = position + buffer.Length;
            if (bufferEnd > offset && position < end)
            {
                long start = Math.Max(offset, position);
                long stop = Math.Min(end, bufferEnd);
                destination[count++] = new IoBuffer(buffer.Address + (nint)(start - position), (int)(stop - start));
            }
            if (bufferEnd >= end)
            {
                break;
            }
            position = bufferEnd;
        }
        return count;
    }

    public static void Clear(ReadOnlySpan<IoBuffer> buffers)
    {
        foreach (IoBuffer buffer in buffers)
        {
            NativeMemory.Clear((void*)buffer.Address, (nuint)buffer.Length);
        }
    }
}
