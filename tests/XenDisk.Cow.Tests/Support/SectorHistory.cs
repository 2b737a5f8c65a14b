using System.Runtime.InteropServices;

namespace XenDisk.Cow.Tests.Support;

/// <summary>
/// What each 512-byte sector of a virtual disk may read back, given the requests a workload issued,
/// which of them were acknowledged and when the guest was told they were durable. Sector contents
/// are kept as 64-bit hashes; every write carries fresh random data, so two writes never collide.
/// <para>
/// Requests are numbered in issue order. A sector's <em>baseline</em> is the request whose value it
/// must at least hold (-1: the initial contents). Two views are checked:
/// </para>
/// <list type="bullet">
/// <item>Live (the image still open): the baseline is the last acknowledged request that touched the
/// sector; any failed request after it may have landed, in whole or in part, so its values are
/// allowed too.</item>
/// <item>Durable (after a crash or a reopen): the baseline is the one recorded at the last durable
/// point at or before the crash (a completed guest flush; for Sync every acknowledged request; a
/// clean close). Any request after the baseline that had started by the crash may have left its
/// value, acknowledged or not.</item>
/// </list>
/// A discard recorded as <em>revertible</em> (one the Lazy bitmap policy may persist late) keeps the
/// sector's previous durable baseline until a later acknowledged write overwrites it: a crash may
/// show the contents from before the discard, never anything else. Other discards neither open nor
/// end such a window (a discard of a discarded grain changes nothing on the storage).
/// </summary>
public sealed class SectorHistory
{
    public const int SectorSize = 512;

    private const int NoWindow = int.MinValue;

    private readonly ulong[] _initial;
    private readonly int[] _lastAcknowledged;
    private readonly int[] _revertibleFrom;
    private readonly List<Request> _requests = [];
    private readonly List<DurablePoint> _durable = [];
    private readonly ulong[] _read;
    private readonly bool[] _satisfied;
    private readonly bool[] _rewritten;
    private static readonly ulong ZeroHash = Hash(new byte[SectorSize]);

    private sealed record Request(int FirstSector, ulong[] Values, int StartPosition, bool Acknowledged);

    private sealed record DurablePoint(int Position, int[] Baseline);

    /// <param name="initial">The disk before the workload (the base, zero-extended; zeros without a base).</param>
    public SectorHistory(ReadOnlySpan<byte> initial)
    {
        if (initial.Length % SectorSize != 0)
        {
            throw new ArgumentException("The disk must be a whole number of sectors.", nameof(initial));
        }
        int sectors = initial.Length / SectorSize;
        _initial = new ulong[sectors];
        for (int s = 0; s < sectors; s++)
        {
            _initial[s] = Hash(initial.Slice(s * SectorSize, SectorSize));
        }
        _lastAcknowledged = new int[sectors];
        Array.Fill(_lastAcknowledged, -1);
        _revertibleFrom = new int[sectors];
        Array.Fill(_revertibleFrom, NoWindow);
        _read = new ulong[sectors];
        _satisfied = new bool[sectors];
        _rewritten = new bool[sectors];
    }

    public int Sectors => _initial.Length;

    public long DiskBytes => (long)_initial.Length * SectorSize;

    /// <summary>Requests recorded so far.</summary>
    public int RequestCount => _requests.Count;

    /// <summary>Records a write of <paramref name="data"/> that started when the device log held <paramref name="startPosition"/> entries.</summary>
    public void Write(long offset, ReadOnlySpan<byte> data, int startPosition, bool acknowledged)
    {
        ulong[] values = new ulong[data.Length / SectorSize];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = Hash(data.Slice(i * SectorSize, SectorSize));
        }
        Add((int)(offset / SectorSize), values, startPosition, acknowledged, isWrite: true, revertible: false);
    }

    /// <summary>Records a discard (the range reads zeros). <paramref name="revertible"/>: see the class summary.</summary>
    public void Discard(long offset, long length, int startPosition, bool acknowledged, bool revertible = false)
    {
        ulong[] values = new ulong[length / SectorSize];
        Array.Fill(values, ZeroHash);
        Add((int)(offset / SectorSize), values, startPosition, acknowledged, isWrite: false, revertible);
    }

    /// <summary>
    /// Everything acknowledged so far is durable from device log position <paramref name="position"/> on.
    /// <paramref name="deferredToo"/>: revertible requests became durable as well (a clean close writes everything).
    /// </summary>
    public void MarkDurable(int position, bool deferredToo = false)
    {
        int[] baseline = new int[Sectors];
        for (int s = 0; s < baseline.Length; s++)
        {
            if (deferredToo)
            {
                _revertibleFrom[s] = NoWindow;
            }
            baseline[s] = _revertibleFrom[s] != NoWindow ? _revertibleFrom[s] : _lastAcknowledged[s];
        }
        _durable.Add(new DurablePoint(position, baseline));
    }

    /// <summary>Checks contents read from the open image against the live view.</summary>
    public void CheckLive(ReadOnlySpan<byte> contents, string where) => Check(contents, _lastAcknowledged, int.MaxValue, where, "the live image");

    /// <summary>
    /// Checks contents read after a crash at device log position <paramref name="crashPosition"/> (int.MaxValue: after everything recorded).
    /// <paramref name="formerContents"/>, when given, also accepts for a sector that a request after its
    /// baseline (not yet durable) touched any value it says the image file held before: the mapping of
    /// an unflushed write may survive a power loss without its data, and then the sector reads what its
    /// new cluster held (zeros, or the data of a cluster freed and reused). Sectors no request touched
    /// since the durable point stay strict.
    /// </summary>
    public void CheckDurable(ReadOnlySpan<byte> contents, int crashPosition, string where, Func<ulong, bool>? formerContents = null)
    {
        DurablePoint? point = null;
        for (int i = _durable.Count - 1; i >= 0; i--)
        {
            if (_durable[i].Position <= crashPosition)
            {
                point = _durable[i];
                break;
            }
        }
        if (point is null)
        {
            throw new InvalidOperationException("No durable point precedes the crash: call MarkDurable when the image is opened.");
        }
        Check(contents, point.Baseline, crashPosition, where, $"the durable point at device log position {point.Position}", formerContents);
    }

    private void Add(int firstSector, ulong[] values, int startPosition, bool acknowledged, bool isWrite, bool revertible)
    {
        if (firstSector < 0 || firstSector + values.Length > Sectors)
        {
            throw new ArgumentOutOfRangeException(nameof(firstSector), "The request lies outside the disk.");
        }
        int index = _requests.Count;
        _requests.Add(new Request(firstSector, values, startPosition, acknowledged));
        if (!acknowledged)
        {
            return;
        }
        int[] lastDurable = _durable.Count > 0 ? _durable[^1].Baseline : _lastAcknowledged;
        for (int s = firstSector; s < firstSector + values.Length; s++)
        {
            if (revertible && _revertibleFrom[s] == NoWindow)
            {
                _revertibleFrom[s] = lastDurable[s];
            }
            else if (isWrite)
            {
                _revertibleFrom[s] = NoWindow;
            }
            _lastAcknowledged[s] = index;
        }
    }

    private ulong ValueOf(int request, int sector) =>
        request < 0 ? _initial[sector] : _requests[request].Values[sector - _requests[request].FirstSector];

    private void Check(ReadOnlySpan<byte> contents, int[] baseline, int crashPosition, string where, string against, Func<ulong, bool>? formerContents = null)
    {
        if (contents.Length != DiskBytes)
        {
            throw new ArgumentException($"Expected {DiskBytes} bytes of disk, got {contents.Length}.", nameof(contents));
        }
        for (int s = 0; s < Sectors; s++)
        {
            _read[s] = Hash(contents.Slice(s * SectorSize, SectorSize));
            _satisfied[s] = _read[s] == ValueOf(baseline[s], s);
            _rewritten[s] = false;
        }
        for (int index = 0; index < _requests.Count; index++)
        {
            Request request = _requests[index];
            if (request.StartPosition >= crashPosition)
            {
                break; // issued in order: no later request can have reached the device either
            }
            for (int i = 0; i < request.Values.Length; i++)
            {
                int s = request.FirstSector + i;
                _rewritten[s] |= index > baseline[s];
                if (!_satisfied[s] && index > baseline[s] && request.Values[i] == _read[s])
                {
                    _satisfied[s] = true;
                }
            }
        }
        if (formerContents is not null)
        {
            for (int s = 0; s < Sectors; s++)
            {
                _satisfied[s] |= _rewritten[s] && formerContents(_read[s]);
            }
        }
        int bad = Array.IndexOf(_satisfied, false);
        if (bad >= 0)
        {
            int count = _satisfied.Count(ok => !ok);
            string origin = Describe(bad, _read[bad]);
            string expected = baseline[bad] < 0 ? "the initial contents" : $"request #{baseline[bad]}'s data";
            Assert.Fail($"{where}: sector {bad} (and {count - 1} more) reads {origin}; expected {expected} (per {against}) or a later request's data.");
        }
    }

    /// <summary>Where a value read from <paramref name="sector"/> came from, for failure messages.</summary>
    private string Describe(int sector, ulong value)
    {
        if (value == _initial[sector])
        {
            return "the initial contents";
        }
        for (int index = _requests.Count - 1; index >= 0; index--)
        {
            Request request = _requests[index];
            int i = sector - request.FirstSector;
            if (i >= 0 && i < request.Values.Length && request.Values[i] == value)
            {
                return $"request #{index}'s data ({(request.Acknowledged ? "acknowledged" : "failed")}, started at device log position {request.StartPosition})";
            }
        }
        if (value == ZeroHash)
        {
            return "zeros";
        }
        foreach (Request request in _requests)
        {
            int i = Array.IndexOf(request.Values, value);
            if (i >= 0)
            {
                return $"data written to sector {request.FirstSector + i}, not to this one";
            }
        }
        return "a value the guest never wrote";
    }

    /// <summary>A 64-bit hash of one sector (FNV-style over 64-bit words with an extra mix).</summary>
    public static ulong Hash(ReadOnlySpan<byte> sector)
    {
        ulong hash = 14695981039346656037;
        foreach (ulong value in MemoryMarshal.Cast<byte, ulong>(sector))
        {
            hash = (hash ^ value) * 1099511628211;
            hash ^= hash >> 29;
        }
        return hash;
    }
}
