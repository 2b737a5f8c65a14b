namespace XenDisk.Cow.Leases;

/// <summary>
/// Leases of the remap fast path over an overlay's lock stripes: a granted remap pins the stripes of
/// its range until its I/O has completed, and whoever is about to change what grains or clusters map
/// to (copy-up, discard, hydration, commit) first bars their stripes and waits for the pins to drain.
/// Unlike the stripe locks these are counters, not thread-affine: a lease is taken on the ring thread
/// and may be released on any thread after an asynchronous completion.
/// <para>
/// Ordering (the store-then-load of Dekker's algorithm, with full fences from the interlocked
/// operations): a pin is counted before the bar is read, a bar is counted before the pins are read,
/// so either the remap sees the bar and declines, or the barrer sees the pin and waits.
/// </para>
/// </summary>
internal sealed class RangeLeases
{
    private readonly int[] _pins;
    private readonly int[] _bars;
    private readonly int _mask;

    public RangeLeases(int stripes)
    {
        if (!int.IsPow2(stripes))
        {
            throw new ArgumentOutOfRangeException(nameof(stripes), "The stripe count must be a power of two.");
        }

        _pins = new int[stripes];
        _bars = new int[stripes];
        _mask = stripes - 1;
    }

    public int StripeCount => _pins.Length;

    /// <summary>Whether someone has barred <paramref name="stripe"/> (for tests and diagnostics).</summary>
    public bool IsBarred(int stripe) => Volatile.Read(ref _bars[stripe & _mask]) != 0;

    /// <summary>Pins <paramref name="count"/> stripes from <paramref name="start"/> (wrapping), unless one is barred: then nothing stays pinned.</summary>
    public bool TryPin(int start, int count)
    {
        for (int n = 0; n < count; n++)
        {
            int stripe = (start + n) & _mask;
            Interlocked.Increment(ref _pins[stripe]);
            if (Volatile.Read(ref _bars[stripe]) != 0)
            {
                Unpin(start, n + 1);
                return false;
            }
        }

        return true;
    }

    public void Unpin(int start, int count)
    {
        for (int n = 0; n < count; n++)
        {
            Interlocked.Decrement(ref _pins[(start + n) & _mask]);
        }
    }

    /// <summary>Bars the stripes (the caller holds their locks) and waits until no I/O of the fast path is in flight there.</summary>
    public void Bar(int start, int count)
    {
        for (int n = 0; n < count; n++)
        {
            Interlocked.Increment(ref _bars[(start + n) & _mask]);
        }

        for (int n = 0; n < count; n++)
        {
            int stripe = (start + n) & _mask;
            if (Volatile.Read(ref _pins[stripe]) != 0)
            {
                // I/O already issued completes in microseconds to milliseconds; this runs on a
                // slow-path thread, never on a ring thread, which is what releases the pins.
                SpinWait spin = default;
                while (Volatile.Read(ref _pins[stripe]) != 0)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                }
            }
        }
    }

    public void Unbar(int start, int count)
    {
        for (int n = 0; n < count; n++)
        {
            Interlocked.Decrement(ref _bars[(start + n) & _mask]);
        }
    }

    /// <summary>The lease that stands for pins taken by <see cref="TryPin"/>: released by <see cref="Release"/>.</summary>
    public static XenDisk.Storage.RemapLease Lease(int start, int count) => new(Encode(start, count));

    /// <summary>Unpins what <paramref name="lease"/> stands for; any thread; nothing for the empty lease.</summary>
    public void Release(XenDisk.Storage.RemapLease lease)
    {
        if (!lease.IsNone)
        {
            (int start, int count) = Decode(lease.Value);
            Unpin(start, count);
        }
    }

    /// <summary>A lease value for <see cref="XenDisk.Storage.RemapLease"/>: never 0.</summary>
    public static long Encode(int start, int count) => ((long)start << 32) | (uint)count;

    public static (int Start, int Count) Decode(long value) => ((int)(value >> 32), (int)(uint)value);
}
