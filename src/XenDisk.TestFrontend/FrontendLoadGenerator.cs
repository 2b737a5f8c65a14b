using System.Diagnostics;
using System.Runtime.InteropServices;
using XenDisk.Abi;

namespace XenDisk.TestFrontend;

/// <summary>What the load generator does.</summary>
public sealed record LoadGeneratorOptions
{
    public int Queue { get; init; }

    /// <summary>Requests kept in flight; default (null) is the full ring.</summary>
    public int? Depth { get; init; }

    // The operation mix, in percent; they must add up to 100.
    public int ReadPercent { get; init; } = 100;

    public int WritePercent { get; init; }

    public int FlushPercent { get; init; }

    public int DiscardPercent { get; init; }

    /// <summary>The region used, in 512-byte sectors; default (null) is the whole disk.</summary>
    public long FirstSector { get; init; }

    public long? SectorCount { get; init; }

    public ulong Seed { get; init; } = 1;

    /// <summary>4 KiB pages per read or write: one segment each, an indirect request beyond
    /// BLKIF_MAX_SEGMENTS_PER_REQUEST (the frontend must have negotiated that many).</summary>
    public int PagesPerRequest { get; init; } = 1;

    /// <summary>
    /// Null: each request at a uniformly random offset aligned to its size. Otherwise requests go at
    /// ascending offsets this many sectors apart, shared by all slots as fio's sequential jobs do
    /// (the request size for a sequential stream; more than that leaves holes, as fio's rw=write:N),
    /// wrapping at the end of the region.
    /// </summary>
    public long? StrideSectors { get; init; }

    /// <summary>Stop each slot once the stream has passed the end of the region (one pass), instead of wrapping.</summary>
    public bool SinglePass { get; init; }

    /// <summary>Verifying mode: each request moves 1..<see cref="PagesPerRequest"/> pages, drawn from the
    /// slot's stream, instead of always <see cref="PagesPerRequest"/>.</summary>
    public bool VariableRequestSize { get; init; }

    /// <summary>With <see cref="VariableRequestSize"/>: three requests in four draw 1..this many pages
    /// and only the fourth up to <see cref="PagesPerRequest"/> (a page cache's mostly small requests).</summary>
    public int? SmallPagesPerRequest { get; init; }

    /// <summary>Verifying mode: every successful write is read back at once and compared (a round).</summary>
    public bool ReadBackWrites { get; init; }

    /// <summary>Verifying mode: a flush after every this many rounds (0: never), so flushes interleave with data.</summary>
    public int FlushEveryRounds { get; init; }

    /// <summary>Verifying mode: the round every block holds before the run (0: zeros, a blank disk), as
    /// written by <see cref="FrontendLoadGenerator.FillPattern"/>, e.g. a golden base under an overlay.</summary>
    public uint InitialGeneration { get; init; }

    /// <summary>Verifying mode: a slot waits this long between rounds (a light, steady load rather than a saturating one).</summary>
    public TimeSpan PauseBetweenRounds { get; init; }

    /// <summary>Called on the completion thread with the first sector of a block that read back wrong.</summary>
    public Action<long>? MismatchObserved { get; init; }

    /// <summary>Called on the completion thread with the status of every request that failed.</summary>
    public Action<short>? ErrorObserved { get; init; }
}

/// <summary>The outcome of a run.</summary>
public sealed record LoadGeneratorResult(
    long Completions,
    long Errors,
    long BytesRead,
    long BytesWritten,
    long Flushes,
    long Discards,
    long SubmitFailures,
    TimeSpan Elapsed,
    LatencyHistogram Latency,
    long BytesVerified,
    long Mismatches,
    long BytesDiscarded,
    LatencyHistogram ReadLatency,
    LatencyHistogram WriteLatency,
    LatencyHistogram FlushLatency,
    LatencyHistogram DiscardLatency)
{
    public double CompletionsPerSecond => Elapsed > TimeSpan.Zero ? Completions / Elapsed.TotalSeconds : 0;
}

/// <summary>
/// A closed-loop driver for one queue: keeps <see cref="LoadGeneratorOptions.Depth"/> requests of
/// <see cref="LoadGeneratorOptions.PagesPerRequest"/> pages in flight, at random offsets or in one
/// ascending stream, each slot resubmitting from the completion thread as soon as its answer
/// arrives. Every slot owns its pages, granted once (from the persistent pool), and its segment
/// list, so the steady state allocates nothing on the frontend side.
/// The verifying mode gives each slot its own part of the region and a model of it (the round, or
/// generation, each 4 KiB block was last written in; 0 for zeros). Writes fill each block with a
/// pattern derived from (sector, round), reads land in poisoned pages and are compared with the
/// model, discards reset it to zeros; with <see cref="LoadGeneratorOptions.ReadBackWrites"/> each
/// write is read back at once, and flushes and pauses come between rounds if asked. A slot has one
/// request in flight and sole use of its blocks, so the model is exact: any difference is a data error.
/// Ownership: the pages go back to the frontend's pool on <see cref="Dispose"/>; the pool ends
/// their grants when the frontend disconnects. One run at a time.
/// </summary>
public sealed class FrontendLoadGenerator : IRequestCompletion, IDisposable
{
    private const int SectorsPerBlock = XenPage.Size / BlkifLimits.SectorSize;
    private const byte VerifyPoison = 0xCC;

    private readonly BlockFrontend _frontend;
    private readonly FrontendRing _ring;
    private readonly LoadGeneratorOptions _options;
    private readonly Slot[] _slots;
    private readonly long _blocks;
    private readonly int _sectorsPerRequest;
    private readonly long _regionSectors;
    private readonly long _sharePages;
    private readonly Timer[] _pauseTimers;
    private long _streamCursor;
    private bool _verifying;
    private volatile bool _stopRequested;
    private int _active;
    private TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private LatencyHistogram[] _latency = NewHistograms();
    private long _completions;
    private long _errors;
    private long _bytesRead;
    private long _bytesWritten;
    private long _flushes;
    private long _discards;
    private long _submitFailures;
    private long _bytesVerified;
    private long _mismatches;
    private long _bytesDiscarded;

    public FrontendLoadGenerator(BlockFrontend frontend, LoadGeneratorOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(frontend);
        _frontend = frontend;
        _options = options ?? new LoadGeneratorOptions();
        if (_options.ReadPercent + _options.WritePercent + _options.FlushPercent + _options.DiscardPercent != 100
            || _options.ReadPercent < 0 || _options.WritePercent < 0 || _options.FlushPercent < 0 || _options.DiscardPercent < 0)
        {
            throw new ArgumentException("The operation mix must be non-negative and add up to 100.", nameof(options));
        }

        _ring = frontend.PickRing(_options.Queue);
        int depth = _options.Depth ?? _ring.Entries;
        if (depth <= 0 || depth > _ring.Entries)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"Depth must be 1..{_ring.Entries}.");
        }

        int pages = _options.PagesPerRequest;
        if (pages < 1 || pages > frontend.NegotiatedFrontendFeatures.MaxSegmentsPerRequest)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"PagesPerRequest must be 1..{frontend.NegotiatedFrontendFeatures.MaxSegmentsPerRequest} (the negotiated segments per request).");
        }

        if (_options.StrideSectors is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "StrideSectors must be positive.");
        }

        _sectorsPerRequest = pages * SectorsPerBlock;
        _regionSectors = _options.SectorCount ?? ((long)frontend.Sectors - _options.FirstSector);
        _blocks = _regionSectors / _sectorsPerRequest;
        if (_blocks < depth)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "The region needs at least one request's worth of blocks per slot.");
        }

        _sharePages = _regionSectors / SectorsPerBlock / depth;
        _slots = new Slot[depth];
        for (int i = 0; i < depth; i++)
        {
            _slots[i].Count = pages;
            _slots[i].Pages = new GrantedPage[pages];
            _slots[i].Segments = new BlkifRequestSegment[pages];
            for (int p = 0; p < pages; p++)
            {
                _slots[i].Pages[p] = frontend.Pool.Rent();
                _slots[i].Segments[p] = new BlkifRequestSegment { GrantRef = _slots[i].Pages[p].GrantRef, FirstSector = 0, LastSector = SectorsPerBlock - 1 };
            }

            _slots[i].Random = SlotStream(_options.Seed, i);
        }

        if (_options.DiscardPercent > 0 && !frontend.NegotiatedFrontendFeatures.Discard)
        {
            throw new ArgumentException("The backend offers no discard.", nameof(options));
        }

        // One timer per slot, made once: a pause between rounds then costs no allocation either.
        _pauseTimers = _options.PauseBetweenRounds > TimeSpan.Zero
            ? Enumerable.Range(0, depth).Select(i => new Timer(static state => ((PausedSlot)state!).Resume(), new PausedSlot(this, i), Timeout.Infinite, Timeout.Infinite)).ToArray()
            : [];
    }

    public int Depth => _slots.Length;

    /// <summary>Runs the mix for <paramref name="duration"/>, then lets in-flight requests finish.</summary>
    public Task<LoadGeneratorResult> RunAsync(TimeSpan duration, CancellationToken cancellationToken = default) =>
        RunCoreAsync(duration, verifying: false, cancellationToken);

    /// <summary>
    /// The mix for <paramref name="duration"/> (<see cref="Timeout.InfiniteTimeSpan"/>: until
    /// <paramref name="cancellationToken"/>), every read checked against the slots' models; mismatches are counted.
    /// </summary>
    public Task<LoadGeneratorResult> RunVerifyingAsync(TimeSpan duration, CancellationToken cancellationToken = default)
    {
        if (_options.StrideSectors is not null)
        {
            throw new InvalidOperationException("The verifying mode goes at random places of each slot's own share of the region.");
        }

        for (int i = 0; i < _slots.Length; i++)
        {
            if (_slots[i].Model is null)
            {
                _slots[i].Model = new uint[_sharePages];
                Array.Fill(_slots[i].Model, _options.InitialGeneration);
            }
        }

        return RunCoreAsync(duration, verifying: true, cancellationToken);
    }

    public void Dispose()
    {
        if (_active > 0)
        {
            throw new InvalidOperationException("A run is in progress.");
        }

        foreach (Timer timer in _pauseTimers)
        {
            timer.Dispose();
        }

        foreach (Slot slot in _slots)
        {
            foreach (GrantedPage page in slot.Pages)
            {
                _frontend.Pool.Return(page);
            }
        }
    }

    void IRequestCompletion.OnCompleted(int token, short status)
    {
        ref Slot slot = ref _slots[token];
        _latency[slot.Operation switch
        {
            BlkifOperation.Read => 0,
            BlkifOperation.Write => 1,
            BlkifOperation.FlushDiskCache => 2,
            _ => 3,
        }].Record(Stopwatch.GetTimestamp() - slot.StartTimestamp);
        _completions++;
        bool ok = status == BlkifStatus.Okay;
        if (!ok)
        {
            _errors++;
            _options.ErrorObserved?.Invoke(status);
        }

        switch (slot.Operation)
        {
            case BlkifOperation.Read when ok:
                _bytesRead += (long)slot.Count * XenPage.Size;
                if (_verifying)
                {
                    Verify(ref slot);
                }

                break;
            case BlkifOperation.Write when ok:
                _bytesWritten += (long)slot.Count * XenPage.Size;
                if (_verifying)
                {
                    slot.Model.AsSpan(slot.ModelIndex, slot.Count).Fill(slot.Generation);
                }

                break;
            case BlkifOperation.FlushDiskCache:
                _flushes++;
                break;
            case BlkifOperation.Discard:
                _discards++;
                if (ok)
                {
                    _bytesDiscarded += (long)slot.Count * XenPage.Size;
                    if (_verifying)
                    {
                        slot.Model.AsSpan(slot.ModelIndex, slot.Count).Clear();
                    }
                }

                break;
        }

        if (_stopRequested)
        {
            Finish();
            return;
        }

        if (!_verifying)
        {
            SubmitNext(token);
        }
        else if (slot.Operation == BlkifOperation.Write && ok && _options.ReadBackWrites)
        {
            // Read the blocks just written back into the same pages, poisoned first so that a read that moves no data cannot pass.
            for (int p = 0; p < slot.Count; p++)
            {
                slot.Pages[p].Page.Span.Fill(VerifyPoison);
            }

            Submit(token, BlkifOperation.Read);
        }
        else if (slot.Operation == BlkifOperation.Read && ok && _options.FlushEveryRounds > 0 && slot.Generation % (uint)_options.FlushEveryRounds == 0)
        {
            Submit(token, BlkifOperation.FlushDiskCache);
        }
        else if (_pauseTimers.Length > 0)
        {
            _pauseTimers[token].Change(_options.PauseBetweenRounds, Timeout.InfiniteTimeSpan);
        }
        else
        {
            SubmitNext(token);
        }
    }

    private async Task<LoadGeneratorResult> RunCoreAsync(TimeSpan duration, bool verifying, CancellationToken cancellationToken)
    {
        if (Interlocked.CompareExchange(ref _active, _slots.Length, 0) != 0)
        {
            throw new InvalidOperationException("A run is in progress.");
        }

        ResetCounters();
        _streamCursor = 0;
        _verifying = verifying;
        _stopRequested = false;
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < _slots.Length; i++)
        {
            _slots[i].Generation++;
            SubmitNext(i);
        }

        // Until the time is up, or until every slot has finished on its own (a single pass that reached the end).
        using (var timer = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
        {
            await Task.WhenAny(Task.Delay(duration, timer.Token), _done.Task).ConfigureAwait(false);
            timer.Cancel();
        }

        _stopRequested = true;
        await _done.Task.ConfigureAwait(false);
        TimeSpan elapsed = Stopwatch.GetElapsedTime(start);
        var latency = new LatencyHistogram();
        foreach (LatencyHistogram histogram in _latency)
        {
            latency.Add(histogram);
        }

        return new LoadGeneratorResult(_completions, _errors, _bytesRead, _bytesWritten, _flushes, _discards,
            Interlocked.Read(ref _submitFailures), elapsed, latency, _bytesVerified, _mismatches, _bytesDiscarded,
            _latency[0], _latency[1], _latency[2], _latency[3]);
    }

    private void SubmitNext(int index)
    {
        ref Slot slot = ref _slots[index];
        ulong random = NextRandom(ref slot.Random);
        int pick = (int)(random % 100);
        byte operation = pick < _options.ReadPercent ? BlkifOperation.Read
            : pick < _options.ReadPercent + _options.WritePercent ? BlkifOperation.Write
            : pick < _options.ReadPercent + _options.WritePercent + _options.FlushPercent ? BlkifOperation.FlushDiskCache
            : BlkifOperation.Discard;
        if (_verifying)
        {
            SubmitVerifying(index, operation);
            return;
        }

        if (_options.StrideSectors is long stride)
        {
            // Slots complete on the frontend's one completion thread, but the first submissions come from
            // the caller's: take the next position atomically.
            long position = (Interlocked.Increment(ref _streamCursor) - 1) * stride;
            if (position + _sectorsPerRequest > _regionSectors && _options.SinglePass)
            {
                Finish();
                return;
            }

            long positions = Math.Max(1, (_regionSectors - _sectorsPerRequest) / stride + 1);
            slot.Sector = _options.FirstSector + ((position / stride % positions) * stride);
        }
        else
        {
            slot.Sector = _options.FirstSector + ((long)(NextRandom(ref slot.Random) % (ulong)_blocks) * _sectorsPerRequest);
        }

        Submit(index, operation);
    }

    /// <summary>The next request of a verifying slot, at a random place of its own share of the region
    /// (no two slots ever touch the same block).</summary>
    private void SubmitVerifying(int index, byte operation)
    {
        ref Slot slot = ref _slots[index];
        int pages = slot.Pages.Length;
        if (_options.VariableRequestSize)
        {
            int most = _options.SmallPagesPerRequest is int small && NextRandom(ref slot.Random) % 4 != 0 ? Math.Min(small, pages) : pages;
            pages = 1 + (int)(NextRandom(ref slot.Random) % (ulong)most);
        }

        slot.Count = pages;
        slot.ModelIndex = (int)(NextRandom(ref slot.Random) % (ulong)(_sharePages - pages + 1));
        slot.Sector = _options.FirstSector + (((index * _sharePages) + slot.ModelIndex) * SectorsPerBlock);
        if (operation == BlkifOperation.Write)
        {
            slot.Generation++;
            for (int p = 0; p < pages; p++)
            {
                FillPattern(slot.Pages[p].Page.Span, slot.Sector + (p * SectorsPerBlock), slot.Generation);
            }
        }
        else if (operation == BlkifOperation.Read)
        {
            // Poisoned first, so that a read that moves no data cannot pass.
            for (int p = 0; p < pages; p++)
            {
                slot.Pages[p].Page.Span.Fill(VerifyPoison);
            }
        }

        Submit(index, operation);
    }

    private void Submit(int index, byte operation)
    {
        ref Slot slot = ref _slots[index];
        slot.Operation = operation;
        ReadOnlySpan<BlkifRequestSegment> segments = operation is BlkifOperation.Read or BlkifOperation.Write ? slot.Segments.AsSpan(0, slot.Count) : [];
        slot.StartTimestamp = Stopwatch.GetTimestamp();
        if (!_ring.TrySubmit(operation, slot.Sector, segments, (long)slot.Count * SectorsPerBlock, this, index))
        {
            Interlocked.Increment(ref _submitFailures);
            Finish();
        }
    }

    private void Verify(ref Slot slot)
    {
        for (int p = 0; p < slot.Count; p++)
        {
            long sector = slot.Sector + (p * SectorsPerBlock);
            uint generation = slot.Model[slot.ModelIndex + p];
            ReadOnlySpan<byte> page = slot.Pages[p].Page.Span;
            if (generation == 0 ? !page.ContainsAnyExcept((byte)0) : PatternMatches(page, sector, generation))
            {
                _bytesVerified += XenPage.Size;
            }
            else
            {
                _mismatches++;
                _options.MismatchObserved?.Invoke(sector);
            }
        }
    }

    /// <summary>True when <paramref name="page"/> holds <see cref="FillPattern"/>'s content for (sector, generation).</summary>
    public static bool PatternMatches(ReadOnlySpan<byte> page, long sector, uint generation)
    {
        ReadOnlySpan<ulong> words = MemoryMarshal.Cast<byte, ulong>(page);
        ulong seed = PatternSeed(sector, generation);
        for (int i = 0; i < words.Length; i++)
        {
            if (words[i] != Mix(seed + (ulong)i))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// The verified content of the 4 KiB block at <paramref name="sector"/> written in round
    /// <paramref name="generation"/>: words derived from both, so a block from the wrong place or the
    /// wrong round never matches.
    /// </summary>
    public static void FillPattern(Span<byte> page, long sector, uint generation)
    {
        Span<ulong> words = MemoryMarshal.Cast<byte, ulong>(page);
        ulong seed = PatternSeed(sector, generation);
        for (int i = 0; i < words.Length; i++)
        {
            words[i] = Mix(seed + (ulong)i);
        }
    }

    private static ulong PatternSeed(long sector, uint generation) =>
        ((ulong)sector * 0x9E3779B97F4A7C15UL) ^ ((ulong)generation * 0xC2B2AE3D27D4EB4FUL);

    /// <summary>SplitMix64's finaliser: a cheap, well-mixed function of the word's position.</summary>
    private static ulong Mix(ulong value)
    {
        value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9UL;
        value = (value ^ (value >> 27)) * 0x94D049BB133111EBUL;
        return value ^ (value >> 31);
    }

    /// <summary>
    /// The start of slot <paramref name="slot"/>'s stream: a hashed point of SplitMix64's 2^64 cycle.
    /// Starts spaced one step apart (as they once were) make slot i replay slot 0's sequence i steps
    /// later, so at queue depth 32 the slots reused each other's offsets; hashed starts are
    /// independent in practice (two of 32 streams of a million draws overlap with odds near 2^-34).
    /// </summary>
    internal static ulong SlotStream(ulong seed, int slot) =>
        Mix(Mix(seed) ^ ((ulong)(slot + 1) * 0xD1B54A32D192ED03UL));

    internal static ulong NextRandom(ref ulong state)
    {
        state += 0x9E3779B97F4A7C15UL;
        return Mix(state);
    }

    private void Finish()
    {
        if (Interlocked.Decrement(ref _active) == 0)
        {
            _done.TrySetResult();
        }
    }

    private void ResetCounters()
    {
        _done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _latency = NewHistograms();
        _completions = _errors = _bytesRead = _bytesWritten = _flushes = _discards = _submitFailures = _bytesVerified = _mismatches = _bytesDiscarded = 0;
    }

    /// <summary>One per operation (read, write, flush, discard), each recorded only by the completion thread.</summary>
    private static LatencyHistogram[] NewHistograms() => [new(), new(), new(), new()];

    private void Resume(int index)
    {
        if (_stopRequested)
        {
            Finish();
        }
        else
        {
            SubmitNext(index);
        }
    }

    private sealed class PausedSlot(FrontendLoadGenerator generator, int index)
    {
        public void Resume() => generator.Resume(index);
    }

    private struct Slot
    {
        public GrantedPage[] Pages;
        public BlkifRequestSegment[] Segments;
        public long Sector;
        public long StartTimestamp;
        public ulong Random;
        public int Count;
        public uint[] Model;
        public int ModelIndex;
        public uint Generation;
        public byte Operation;
    }
}
