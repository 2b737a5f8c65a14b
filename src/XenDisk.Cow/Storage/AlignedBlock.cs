using System.Runtime.InteropServices;
using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>
/// A page-aligned, zeroed block of native memory: the unit in which both overlay formats hold
/// metadata (qcow2 L1/L2 tables, refcount blocks and header cluster; the bitmap header, map
/// write-back staging and zero grain) so that it can be handed to devices opened with O_DIRECT. Owned by whoever created it; <see cref="Dispose"/> frees it once.
/// </summary>
internal sealed unsafe class AlignedBlock : IDisposable
{
    public const int Alignment = 4096;

    private byte* _memory;

    public AlignedBlock(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Length = length;
        nuint bytes = (nuint)Math.Max(length, Alignment);
        _memory = (byte*)NativeMemory.AlignedAlloc(bytes, Alignment);
        NativeMemory.Clear(_memory, bytes);
    }

    public int Length { get; }

    public nint Address => (nint)_memory;

    public Span<byte> Span => new(_memory, Length);

    public IoBuffer AsIoBuffer() => new((nint)_memory, Length);

    public IoBuffer AsIoBuffer(int start, int length) => new((nint)(_memory + start), length);

    public Span<byte> Slice(int start, int length) => Span.Slice(start, length);

    public void Dispose()
    {
        if (_memory != null)
        {
            NativeMemory.AlignedFree(_memory);
            _memory = null;
        }
    }
}

/// <summary>Metadata I/O in whole device sectors through aligned memory.</summary>
internal static class DeviceIo
{
    /// <summary>Reads <c>destination.Length</c> bytes at any byte offset, through an aligned bounce block.</summary>
    public static IoStatus ReadBytes(IBlockDevice device, long offset, Span<byte> destination)
    {
        if (offset < 0 || destination.IsEmpty)
        {
            return destination.IsEmpty ? IoStatus.Ok : IoStatus.OutOfRange;
        }
        const int Sector = 512;
        long start = offset & ~(long)(Sector - 1);
        long end = checked(offset + destination.Length + Sector - 1) & ~(long)(Sector - 1);
        using AlignedBlock block = new(checked((int)(end - start)));
        IoStatus status = ReadClamped(device, start, block);
        if (status == IoStatus.Ok)
        {
            block.Span.Slice((int)(offset - start), destination.Length).CopyTo(destination);
        }
        return status;
    }

    /// <summary>
    /// Reads a whole block at an aligned offset. Where the block extends past the device's end (a file
    /// whose size is not a whole number of clusters) the tail reads as zeros.
    /// </summary>
    public static IoStatus ReadClamped(IBlockDevice device, long offset, AlignedBlock block)
    {
        long size = device.Info.SizeBytes;
        int sector = Math.Max(512, device.Info.LogicalSectorSize);
        if (offset < 0)
        {
            // An offset from a hostile table with its top bit set: size - offset would wrap.
            return IoStatus.OutOfRange;
        }
        if (offset >= size)
        {
            block.Span.Clear();
            return IoStatus.Ok;
        }
        long available = size - offset;
        if (available >= block.Length)
        {
            IoBuffer whole = block.AsIoBuffer();
            return device.Read(offset, new ReadOnlySpan<IoBuffer>(in whole));
        }
        int readable = (int)(available & ~(long)(sector - 1));
        if (readable < available)
        {
            // The device ends mid-sector (qemu-img leaves such file ends). A device that reads past
            // its end as zeros (a file through the page cache) gives that last part sector too.
            int upToSector = readable + sector;
            block.Span[upToSector..].Clear();
            IoBuffer tail = block.AsIoBuffer(0, upToSector);
            if (device.Read(offset, new ReadOnlySpan<IoBuffer>(in tail)) == IoStatus.Ok)
            {
                return IoStatus.Ok;
            }
        }
        block.Span[readable..].Clear();
        if (readable == 0)
        {
            return IoStatus.Ok;
        }
        IoBuffer part = block.AsIoBuffer(0, readable);
        return device.Read(offset, new ReadOnlySpan<IoBuffer>(in part));
    }

    public static IoStatus Write(IBlockDevice device, long offset, AlignedBlock block, int start, int length)
    {
        IoBuffer buffer = block.AsIoBuffer(start, length);
        return device.Write(offset, new ReadOnlySpan<IoBuffer>(in buffer));
    }
}
