using System.Runtime.InteropServices;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

/// <summary>
/// Page-aligned, zeroed native memory that O_DIRECT devices accept as it is: the header sector, the
/// zero grain and the map write-back staging area. Owned by the overlay that made it; freed once.
/// </summary>
internal sealed unsafe class NativeBlock : IDisposable
{
    private const int Alignment = 4096;

    private byte* _memory;

    public NativeBlock(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Length = length;
        nuint bytes = (nuint)Math.Max(length, Alignment);
        _memory = (byte*)NativeMemory.AlignedAlloc(bytes, Alignment);
        NativeMemory.Clear(_memory, bytes);
    }

    public long Length { get; }

    public Span<byte> Span => new(_memory, checked((int)Length));

    public Span<byte> Slice(long start, int length) => new(_memory + start, length);

    public IoBuffer AsIoBuffer(long start, int length) => new((nint)(_memory + start), length);

    public void Dispose()
    {
        if (_memory != null)
        {
            NativeMemory.AlignedFree(_memory);
            _memory = null;
        }
    }
}
