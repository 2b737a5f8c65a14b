using System.Runtime.InteropServices;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// What convert and compare share: reading a whole virtual disk in page-aligned chunks (devices may
/// be opened with O_DIRECT), and telling zero blocks from data. Ownership: the chunk owns its memory
/// and frees it once on <see cref="Dispose"/>.
/// </summary>
internal sealed unsafe class ImageChunk : IDisposable
{
    /// <summary>Bytes read per step: large enough to stream, small enough to stay responsive to Ctrl+C and progress.</summary>
    public const int Bytes = 1 << 20;

    /// <summary>
    /// The granularity at which zeros are detected and skipped: qemu-img convert's default for -S
    /// (sparse_size, "4k"), so a converted raw file has the holes qemu-img would leave.
    /// </summary>
    public const int ZeroBlock = 4096;

    private byte* _memory = (byte*)NativeMemory.AlignedAlloc(Bytes, (nuint)AlignedBufferPool.PageSize);

    public Span<byte> Span(int length) => new(_memory, length);

    /// <summary>Reads <paramref name="length"/> bytes at <paramref name="offset"/>; a failure throws naming the image and the status in words.</summary>
    public Span<byte> Read(IBlockDevice device, string name, long offset, int length)
    {
        IoBuffer buffer = new((nint)_memory, length);
        IoStatus status = device.Read(offset, new ReadOnlySpan<IoBuffer>(in buffer));
        if (status != IoStatus.Ok)
        {
            throw new StorageException($"reading '{name}' at offset {offset} failed: {status.Describe()}");
        }
        return Span(length);
    }

    /// <summary>Writes <paramref name="length"/> bytes from <paramref name="start"/> within the chunk to <paramref name="offset"/>.</summary>
    public void Write(IBlockDevice device, string name, long offset, int start, int length)
    {
        IoBuffer buffer = new((nint)(_memory + start), length);
        IoStatus status = device.Write(offset, new ReadOnlySpan<IoBuffer>(in buffer));
        if (status != IoStatus.Ok)
        {
            throw new StorageException($"writing '{name}' at offset {offset} failed: {status.Describe()}");
        }
    }

    /// <summary>How many bytes, from <paramref name="length"/> bytes of a chunk, to read so that a device of <paramref name="size"/> bytes is not read past its end.</summary>
    public static int LengthAt(long offset, long size) => (int)Math.Min(Bytes, size - offset);

    public void Dispose()
    {
        if (_memory != null)
        {
            NativeMemory.AlignedFree(_memory);
            _memory = null;
        }
    }
}
