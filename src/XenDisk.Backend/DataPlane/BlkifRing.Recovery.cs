using XenDisk.Abi;

namespace XenDisk.Backend.DataPlane;

// Crash-safe restart: the in-flight record a killed predecessor left for this very connection says
// which requests it consumed and never answered and which responses it wrote and never published.
// They are finished here, before the ring takes anything new, so that every request is answered
// exactly once (vhost-user's inflight tracking, applied to blkif).
public sealed partial class BlkifRing
{
    private InflightRecord? _inflight;
    private InflightRecord.Recovery? _recovery;
    private int _redoNext;

    /// <summary>
    /// Tests only: called at the points where a kill would leave the record and the shared ring in
    /// different states; a hook that throws <see cref="RingKilledForTest"/> ends the ring thread there
    /// as SIGKILL would end the process: no response pushed, nothing released, the record left as it is.
    /// </summary>
    internal Action<string>? KillPoint
    {
        get => _killPoint;
        set
        {
            _killPoint = value;
            if (_inflight is not null)
            {
                _inflight.KillPoint = value;
            }
        }
    }

    private Action<string>? _killPoint;

    /// <summary>Requests redone after an unclean stop of a previous instance (0 after a clean one).</summary>
    public int RecoveredRequests { get; private set; }

    private void OpenInflightRecord()
    {
        if (Setup.InflightRecordPath is not { } path)
        {
            return;
        }

        InflightRecord.Recovery? recovery;
        string? discarded;
        try
        {
            _inflight = InflightRecord.Open(path, _contexts.Length, _ring.SlotSize, InflightRecord.HashIdentity(Setup.InflightIdentity),
                out recovery, out discarded);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Held by another process (a second backend serving the same device) or not writable.
            throw new InvalidOperationException($"Ring {Setup.Name}: cannot keep its in-flight record {path}: {e.Message}", e);
        }

        _inflight.KillPoint = _killPoint;
        if (discarded is not null)
        {
            DataPlaneLog.InflightRecordDiscarded(_logger, Setup.Name, path, discarded);
        }

        if (recovery is null)
        {
            return;
        }

        // The record must agree with what the frontend can see: responses published by the shared ring
        // lie at or before the record's, no more than a ring's worth of requests is outstanding, and
        // the frontend has produced every request the record says was consumed. A frontend that set
        // its ring up afresh with the same references and port (the identity cannot tell) fails the
        // last test as soon as the old connection had consumed more than the new one has produced.
        uint published = _responseProducerPublished;
        uint produced = _ring.ReadRequestProducer();
        if (recovery.ResponseProducer - published > (uint)_ring.Entries || recovery.RequestConsumer - published > (uint)_ring.Entries
            || produced - recovery.RequestConsumer > (uint)_ring.Entries)
        {
            DataPlaneLog.InflightRecordDiscarded(_logger, Setup.Name, path,
                $"its indices (req_cons {recovery.RequestConsumer}, rsp_prod {recovery.ResponseProducer}) do not fit the shared ring's (req_prod {produced}, rsp_prod {published})");
            _inflight.Reset(InflightRecord.HashIdentity(Setup.InflightIdentity));
            return;
        }

        _requestConsumer = recovery.RequestConsumer;
        _responseProducerPrivate = recovery.ResponseProducer;
        _recovery = recovery;

        // The contexts of the requests to redo are taken out of the free list: each keeps its index,
        // which is its entry in the record.
        var busy = new HashSet<int>(recovery.InFlight.Select(e => e.Entry));
        _freeContextCount = 0;
        for (int i = _contexts.Length - 1; i >= 0; i--)
        {
            if (!busy.Contains(i))
            {
                _freeContexts[_freeContextCount++] = i;
            }
        }
    }

    /// <summary>Ring thread, before the loop: says what is being recovered.</summary>
    private void RedoRecoveredRequests()
    {
        if (_recovery is { } recovery)
        {
            DataPlaneLog.RingRecovered(_logger, Setup.Name, recovery.InFlight.Count, recovery.ResponseProducer - _responseProducerPublished,
                recovery.RequestConsumer, recovery.ResponseProducer);
        }
    }

    /// <summary>
    /// Redoes recovered requests, in the order they were consumed, under the same rules as requests
    /// taken off the ring (a barrier still waits for the I/O before it). True once all are started:
    /// only then does the ring take new requests.
    /// </summary>
    private bool TakeRecoveredRequests()
    {
        InflightRecord.Recovery? recovery = _recovery;
        if (recovery is null)
        {
            return true;
        }

        Span<byte> slot = stackalloc byte[_ring.SlotSize];
        while (_redoNext < recovery.InFlight.Count && CanTakeRequests)
        {
            int entry = recovery.InFlight[_redoNext++].Entry;

            // The recorded copy is the private copy of the request: it is validated again like any
            // request (the record is only a file, and may have been tampered with).
            _inflight!.Slot(entry).CopyTo(slot);
            RecoveredRequests++;
            HandleRequest(_contexts[entry], slot);
        }

        if (_redoNext < recovery.InFlight.Count)
        {
            return false;
        }

        _recovery = null;
        return true;
    }
}

/// <summary>Thrown by a test's <see cref="BlkifRing.KillPoint"/> hook: the ring thread ends as if the process had been killed.</summary>
internal sealed class RingKilledForTest : Exception
{
    public RingKilledForTest(string point)
        : base("killed at " + point)
    {
    }
}
