using System.Runtime.InteropServices;

namespace XenDisk.Storage;

/// <summary>
/// A disk held in page-aligned native memory, for tests and for overlays that live only in RAM.
/// Every operation is a memory copy, so <see cref="CompletesInline"/> is true. Discard (secure or
/// not) zeroes the range, so <see cref="BlockDeviceInfo.DiscardZeroes"/> is true.
/// <para>
/// Thread safety: concurrent I/O is safe (overlapping writes race as they would on a disk).
/// <see cref="Resize"/> waits for I/O in progress, so an I/O never sees memory being freed.
/// Online resize follows real storage: <see cref="Resize"/> changes the storage at once (I/O is
/// checked against the new size), while <see cref="Info"/> keeps the old size until
/// <see cref="Refresh"/>, the way a file grown by another process is noticed only on refresh.
/// </para>
/// </summary>
public sealed unsafe class MemoryBlockDevice : IBlockDevice
{
    private const nuint PageSize = 4096;

    // I/O takes the read side (many at once); Resize and Dispose take the write side. The lock is never
    // disposed: I/O after Dispose must still be able to take it and answer IoError instead of throwing.
    private readonly ReaderWriterLockSlim _storageLock = new(LockRecursionPolicy.NoRecursion);
    private byte* _memory;
    private long _storageSize;
    private BlockDeviceInfo _info;

    /// <summary>Creates a zero-filled device.</summary>
    /// <param name="sizeBytes">A multiple of <paramref name="logicalSectorSize"/>.</param>
    /// <param name="logicalSectorSize">512 or 4096 (any power of two from 512 to 65536).</param>
    /// <param name="physicalSectorSize">0 (the default) means the logical sector size.</param>
    /// <param name="readOnly">Refuse writes and discards with <see cref="IoStatus.ReadOnly"/>.</param>
    public MemoryBlockDevice(long sizeBytes, int logicalSectorSize = 512, int physicalSectorSize = 0, bool readOnly = false)
    {
        if (physicalSectorSize == 0)
        {
            physicalSectorSize = logicalSectorSize;
        }
        IoRange.ValidateGeometry(sizeBytes, logicalSectorSize, physicalSectorSize);
        _memory = AllocateZeroed(sizeBytes);
        _storageSize = sizeBytes;
        _info = new BlockDeviceInfo
        {
            SizeBytes = sizeBytes,
            LogicalSectorSize = logicalSectorSize,
            PhysicalSectorSize = physicalSectorSize,
            ReadOnly = readOnly,
            SupportsDiscard = true,
            SupportsSecureDiscard = true,
            DiscardZeroes = true,
            DiscardGranularity = logicalSectorSize,
            DiscardAlignment = 0,
            HasVolatileCache = false,
            Description = $"memory ({sizeBytes} bytes)",
        };
    }

    public BlockDeviceInfo Info => Volatile.Read(ref _info);

    public bool CompletesInline => true;

    /// <summary>The current storage size in bytes (after <see cref="Resize"/>, before <see cref="Refresh"/> this differs from Info).</summary>
    public long StorageSize => Volatile.Read(ref _storageSize);

    /// <summary>
    /// The whole disk, for tests to fill and verify. Borrowed: valid until the next
    /// <see cref="Resize"/> or <see cref="Dispose"/>; do not hold it across either.
    /// Only for devices smaller than 2 GiB.
    /// </summary>
    public Span<byte> Contents
    {
        get
        {
            ObjectDisposedException.ThrowIf(_memory == null, this);
            return new Span<byte>(_memory, checked((int)_storageSize));
        }
    }

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        _storageLock.EnterReadLock();
        try
        {
            IoStatus status = CheckRange(offset, buffers);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            byte* source = _memory + offset;
            foreach (ref readonly IoBuffer buffer in buffers)
            {
                Buffer.MemoryCopy(source, (void*)buffer.Address, buffer.Length, buffer.Length);
                source += buffer.Length;
            }
            return IoStatus.Ok;
        }
        finally
        {
            _storageLock.ExitReadLock();
        }
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (_info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        _storageLock.EnterReadLock();
        try
        {
            IoStatus status = CheckRange(offset, buffers);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            byte* destination = _memory + offset;
            foreach (ref readonly IoBuffer buffer in buffers)
            {
                Buffer.MemoryCopy((void*)buffer.Address, destination, buffer.Length, buffer.Length);
                destination += buffer.Length;
            }
            return IoStatus.Ok;
        }
        finally
        {
            _storageLock.ExitReadLock();
        }
    }

    /// <summary>Nothing to make durable: memory has no cache in front of it.</summary>
    public IoStatus Flush() => IoStatus.Ok;

    /// <summary>Zeroes the range; secure discard is the same operation, since no copy of the data remains.</summary>
    public IoStatus Discard(long offset, long length, bool secure)
    {
        if (_info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        _storageLock.EnterReadLock();
        try
        {
            if (_memory == null || !IoRange.IsValid(offset, length, _storageSize, _info.LogicalSectorSize))
            {
                return _memory == null ? IoStatus.IoError : IoStatus.OutOfRange;
            }
            NativeMemory.Clear(_memory + offset, (nuint)length);
            return IoStatus.Ok;
        }
        finally
        {
            _storageLock.ExitReadLock();
        }
    }

    public BlockDeviceInfo Refresh()
    {
        BlockDeviceInfo current = Volatile.Read(ref _info);
        long size = StorageSize;
        if (current.SizeBytes != size)
        {
            current = current with { SizeBytes = size, Description = $"memory ({size} bytes)" };
            Volatile.Write(ref _info, current);
        }
        return current;
    }

    /// <summary>
    /// Grows (with zeros) or shrinks the storage, keeping the common prefix: the memory analogue of
    /// truncating a disk image underneath a running guest. <see cref="Info"/> changes on the next <see cref="Refresh"/>.
    /// </summary>
    public void Resize(long newSize)
    {
        IoRange.ValidateGeometry(newSize, _info.LogicalSectorSize, _info.PhysicalSectorSize);
        _storageLock.EnterWriteLock();
        try
        {
            ObjectDisposedException.ThrowIf(_memory == null, this);
            byte* replacement = AllocateZeroed(newSize);
            long kept = Math.Min(newSize, _storageSize);
            Buffer.MemoryCopy(_memory, replacement, newSize, kept);
            NativeMemory.AlignedFree(_memory);
            _memory = replacement;
            Volatile.Write(ref _storageSize, newSize);
        }
        finally
        {
            _storageLock.ExitWriteLock();
        }
    }

    public void Dispose()
    {
        _storageLock.EnterWriteLock();
        try
        {
            if (_memory != null)
            {
                NativeMemory.AlignedFree(_memory);
                _memory = null;
                _storageSize = 0;
            }
        }
        finally
        {
            _storageLock.ExitWriteLock();
        }
    }

    // Called under the read lock. A disposed device answers IoError rather than touching freed memory.
    private IoStatus CheckRange(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (_memory == null)
        {
            return IoStatus.IoError;
        }
        return IoRange.Check(offset, buffers, _storageSize, _info.LogicalSectorSize, out _);
    }

    private static byte* AllocateZeroed(long sizeBytes)
    {
        // AlignedAlloc(0) may return null; one page keeps "null" meaning "disposed".
        nuint bytes = Math.Max((nuint)sizeBytes, PageSize);
        byte* memory = (byte*)NativeMemory.AlignedAlloc(bytes, PageSize);
        NativeMemory.Clear(memory, bytes);
        return memory;
    }
}
