using System.Runtime.InteropServices;

namespace XenDisk.Storage;

/// <summary>
/// A bounded pool of page-aligned native buffers, all of one size: bounce buffers for direct I/O,
/// staging buffers for the data plane and the copy-on-write engine.
/// <para>
/// Ownership: a rented <see cref="AlignedBuffer"/> belongs to the renter until it passes it to
/// <see cref="Return"/>, exactly once; after that the memory may be handed to someone else at once,
/// so nothing may keep using it. The pool owns the memory: it frees idle buffers on
/// <see cref="Dispose"/>, and buffers still rented then are freed when they come back.
/// </para>
/// <para>
/// Allocation: buffers are allocated (natively) on first demand up to <see cref="Capacity"/> and then
/// reused, so renting and returning allocate nothing in steady state. When all are rented,
/// <see cref="TryRent"/> fails and <see cref="Rent"/> waits for a return (back-pressure); both count
/// the shortage in <see cref="ExhaustedCount"/>. Thread-safe.
/// </para>
/// </summary>
public sealed unsafe class AlignedBufferPool : IDisposable
{
    /// <summary>The alignment every buffer has: one page, which satisfies O_DIRECT for every sector size up to 4 KiB and grant copies.</summary>
    public const int PageSize = 4096;

    // A plain object: Monitor.Wait/Pulse give Rent its wait for a return without allocating.
    private readonly object _gate = new();
    private readonly nint[] _idle;
    private int _idleCount;
    private int _allocatedCount;
    private int _waiters;
    private long _exhaustedCount;
    private bool _disposed;

    /// <param name="bufferSize">Bytes per buffer; a positive multiple of <paramref name="alignment"/>.</param>
    /// <param name="capacity">The most buffers that exist at once.</param>
    /// <param name="alignment">A power of two, at least <see cref="PageSize"/>.</param>
    public AlignedBufferPool(int bufferSize, int capacity, int alignment = PageSize)
    {
        if (alignment < PageSize || !int.IsPow2(alignment))
        {
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "The alignment must be a power of two of at least one page.");
        }
        if (bufferSize <= 0 || bufferSize % alignment != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bufferSize), bufferSize, "The buffer size must be a positive multiple of the alignment.");
        }
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        BufferSize = bufferSize;
        Capacity = capacity;
        Alignment = alignment;
        _idle = new nint[capacity];
    }

    public int BufferSize { get; }

    public int Capacity { get; }

    public int Alignment { get; }

    /// <summary>How many times a rent found every buffer in use (a back-pressure counter for metrics).</summary>
    public long ExhaustedCount => Interlocked.Read(ref _exhaustedCount);

    /// <summary>Buffers rented out right now.</summary>
    public int RentedCount
    {
        get
        {
            lock (_gate)
            {
                return _allocatedCount - _idleCount;
            }
        }
    }

    /// <summary>
    /// Rents a buffer if one is free or may still be allocated; never waits. False when all are in use
    /// (counted in <see cref="ExhaustedCount"/>) or the pool is disposed: no exception, for hot paths.
    /// </summary>
    public bool TryRent(out AlignedBuffer buffer) => TryRent(out buffer, millisecondsTimeout: 0);

    /// <summary>
    /// Rents a buffer, waiting up to <paramref name="millisecondsTimeout"/> (<see cref="Timeout.Infinite"/>
    /// to wait for as long as it takes) for one to be returned. False on time-out or when the pool is
    /// disposed (before or during the wait): no exception, for hot paths.
    /// </summary>
    public bool TryRent(out AlignedBuffer buffer, int millisecondsTimeout)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(millisecondsTimeout, Timeout.Infinite);
        lock (_gate)
        {
            if (_disposed)
            {
                buffer = default;
                return false;
            }
            if (TryTakeLocked(out buffer))
            {
                return true;
            }
            _exhaustedCount++;
            if (millisecondsTimeout == 0)
            {
                return false;
            }
            long deadline = millisecondsTimeout == Timeout.Infinite ? long.MaxValue : Environment.TickCount64 + millisecondsTimeout;
            _waiters++;
            try
            {
                // Re-check after every wake-up: another renter may have taken the returned buffer first.
                while (!_disposed && !TryTakeLocked(out buffer))
                {
                    long remaining = deadline == long.MaxValue ? Timeout.Infinite : deadline - Environment.TickCount64;
                    if (remaining != Timeout.Infinite && remaining <= 0)
                    {
                        return false;
                    }
                    Monitor.Wait(_gate, remaining == Timeout.Infinite ? Timeout.Infinite : (int)remaining);
                }
                return !_disposed;
            }
            finally
            {
                _waiters--;
            }
        }
    }

    /// <summary>Rents a buffer, waiting for one to be returned when all <see cref="Capacity"/> are in use. Throws when the pool is disposed.</summary>
    public AlignedBuffer Rent()
    {
        if (!TryRent(out AlignedBuffer buffer, Timeout.Infinite))
        {
            ThrowDisposed();
        }
        return buffer;
    }

    /// <summary>Gives a rented buffer back. The caller must not touch its memory afterwards.</summary>
    public void Return(AlignedBuffer buffer)
    {
        if (buffer.Address == 0 || buffer.Length != BufferSize)
        {
            throw new ArgumentException("The buffer was not rented from this pool.", nameof(buffer));
        }
        lock (_gate)
        {
            if (_disposed)
            {
                NativeMemory.AlignedFree((void*)buffer.Address);
                _allocatedCount--;
                return;
            }
            if (_idleCount == _idle.Length)
            {
                throw new InvalidOperationException("More buffers were returned than rented: a buffer was returned twice.");
            }
            _idle[_idleCount++] = buffer.Address;
            if (_waiters > 0)
            {
                Monitor.Pulse(_gate);
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            while (_idleCount > 0)
            {
                NativeMemory.AlignedFree((void*)_idle[--_idleCount]);
                _allocatedCount--;
            }
            Monitor.PulseAll(_gate);
        }
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private void ThrowDisposed() => throw new ObjectDisposedException(nameof(AlignedBufferPool));

    private bool TryTakeLocked(out AlignedBuffer buffer)
    {
        if (_idleCount > 0)
        {
            buffer = new AlignedBuffer(_idle[--_idleCount], BufferSize);
            return true;
        }
        if (_allocatedCount < Capacity)
        {
            void* memory = NativeMemory.AlignedAlloc((nuint)BufferSize, (nuint)Alignment);
            _allocatedCount++;
            buffer = new AlignedBuffer((nint)memory, BufferSize);
            return true;
        }
        buffer = default;
        return false;
    }
}

/// <summary>A buffer rented from an <see cref="AlignedBufferPool"/>; see the pool for who owns it when.</summary>
public readonly record struct AlignedBuffer(nint Address, int Length)
{
    public unsafe Span<byte> Span => new((void*)Address, Length);

    public IoBuffer AsIoBuffer() => new(Address, Length);
}
