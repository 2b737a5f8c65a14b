using XenDisk.Abi;
using XenDisk.Storage;

namespace XenDisk.Backend.DataPlane;

// Request handling: parse and validate the private copy, get at the guest's data, run the I/O,
// answer. Results, not exceptions: anything the guest can cause ends as a response status.
public sealed partial class BlkifRing
{
    /// <summary>A request taken off the ring that cannot start yet: a barrier or flush waiting for
    /// earlier I/O to drain, or a grant-copy request waiting for bounce buffers. While one waits, no
    /// further request is taken (back-pressure: the frontend's requests wait in the ring).</summary>
    private RequestContext? _blocked;

    /// <summary>
    /// The ring thread's clock, read once per loop iteration (<see cref="RefreshNow"/>): a request's start
    /// and end and a persistent grant's last use are stamped with the iteration that saw them. Per request
    /// these were three clock reads, and where the vDSO cannot read the clock (a PV dom0 whose Xen clock
    /// source is not marked stable) each one is a system call.
    /// </summary>
    private long _now;

    private void RefreshNow() => _now = Setup.Options.TimeProvider.GetTimestamp();

    /// <summary>Requests whose I/O has been started and not completed.</summary>
    private int _inFlightIo;

    /// <summary>A barrier or flush is running: nothing else starts until it completes.</summary>
    private bool _exclusiveInFlight;

    private void HandleRequest(RequestContext context, ReadOnlySpan<byte> slot)
    {
        context.StartTimestamp = _now;

        // The disk's Info is read per request: an online resize replaces it.
        RequestLimits limits = RequestLimits.For(Setup.Protocol, Setup.Features, Setup.Disk.Info);
        RequestCheck check = BlkifRequestParser.Decode(slot, limits, out context.Request, context.Segments);
        if (check == RequestCheck.Ok && context.Request.IsIndirect)
        {
            check = FetchIndirectSegments(context);
        }

        if (check == RequestCheck.Ok)
        {
            check = BlkifRequestParser.Validate(ref context.Request, context.RequestSegments, limits);
        }

        if (check != RequestCheck.Ok)
        {
            Refuse(context, check);
            return;
        }

        // Barrier and flush (blkif.h): every earlier request completes before it starts.
        if (context.Request.Drains && _inFlightIo > 0)
        {
            _blocked = context;
            return;
        }

        Dispatch(context);
    }

    private void Dispatch(RequestContext context)
    {
        if (context.Request.SegmentCount > 0)
        {
            DataAccess access = AcquireData(context);
            if (access == DataAccess.NoBuffers)
            {
                _blocked = context;
                Statistics.BackPressure();
                return;
            }

            if (access == DataAccess.BadGrant)
            {
                Refuse(context, RequestCheck.BadGrant);
                return;
            }
        }

        if (context.Request.Drains)
        {
            _exclusiveInFlight = true;
        }

        _inFlightIo++;
        if (_workers is null)
        {
            Execute(context);
            Complete(context);
        }
        else if (!TrySubmitFast(context) && !TrySubmitPolled(context))
        {
            if (_workers.Enqueue(context.Index))
            {
                Statistics.IoThreadStarted();
            }
        }
    }

    /// <summary>Starts the waiting request once what it waits for is there.</summary>
    private void TryDispatchBlocked()
    {
        RequestContext? context = _blocked;
        if (context is null
            || (context.Request.Drains && _inFlightIo > 0)
            || (_bounce is not null && context.Request.SegmentCount > _bounce.Available))
        {
            return;
        }

        _blocked = null;
        Dispatch(context);
    }

    /// <summary>Runs the storage call; on an I/O thread, or inline for devices that never block.</summary>
    private void Execute(RequestContext context)
    {
        IBlockDevice disk = Setup.Disk;
        ref BlkifRequestInfo request = ref context.Request;
        ReadOnlySpan<IoBuffer> buffers = context.Buffers.AsSpan(0, request.SegmentCount);
        context.Result = request.Kind switch
        {
            RingOperation.Read => disk.Read(request.Offset, buffers),
            RingOperation.Write => disk.Write(request.Offset, buffers),
            RingOperation.Discard => request.Length == 0 ? IoStatus.Ok : disk.Discard(request.Offset, request.Length, request.IsSecureDiscard),
            _ => FlushAround(disk, request.Offset, buffers),
        };
    }

    /// <summary>
    /// Barrier and flush, after earlier requests drained: flush what they wrote; then, if the request
    /// carries data, write it and flush again so that it is durable before the response (blkfront
    /// sends FUA writes as flush requests with data).
    /// </summary>
    private static IoStatus FlushAround(IBlockDevice disk, long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        IoStatus status = disk.Flush();
        if (status != IoStatus.Ok || buffers.IsEmpty)
        {
            return status;
        }

        status = disk.Write(offset, buffers);
        return status != IoStatus.Ok ? status : disk.Flush();
    }

    private void RunOnIoThread(int index)
    {
        RequestContext context = _contexts[index];
        bool publish = false;
        try
        {
            if (_publications is not null && context.Request.Kind == RingOperation.Write)
            {
                ref BlkifRequestInfo request = ref context.Request;
                context.Result = _publications.Device.WriteUnpublished(request.Offset, context.Buffers.AsSpan(0, request.SegmentCount), out publish);
            }
            else
            {
                Execute(context);
            }
        }
        catch (Exception exception)
        {
            // A storage implementation broke its contract (results, not exceptions). The request is
            // answered with an error and the ring thread rethrows this, failing the device visibly.
            context.Result = IoStatus.IoError;
            Interlocked.CompareExchange(ref _workerFailure, exception, null);
        }

        if (publish)
        {
            // Answered only after its mapping is in the file (crash promise), gathered with others.
            _publications!.Join(index);
        }
        else
        {
            PostCompletion(index);
        }
    }

    /// <summary>I/O thread (a publication's leader): the mapping of <paramref name="indices"/> is in the file, or failed to get there.</summary>
    private void OnPublished(ReadOnlySpan<int> indices, IoStatus status, Exception? failure)
    {
        if (failure is not null)
        {
            Interlocked.CompareExchange(ref _workerFailure, failure, null);
        }

        if (status != IoStatus.Ok)
        {
            foreach (int index in indices)
            {
                if (_contexts[index].Result == IoStatus.Ok)
                {
                    _contexts[index].Result = status;
                }
            }
        }

        PostCompletions(indices);
    }

    /// <summary>Ring thread: the I/O of <paramref name="context"/> finished; release its data and answer.</summary>
    private void Complete(RequestContext context)
    {
        ref BlkifRequestInfo request = ref context.Request;
        bool dataDelivered = request.SegmentCount == 0 || ReleaseData(context);

        short status;
        if (context.Result != IoStatus.Ok)
        {
            status = BlkifStatus.Error;
            Statistics.StorageError();
        }
        else if (!dataDelivered)
        {
            status = BlkifStatus.Error;
            Statistics.GuestError();
        }
        else
        {
            status = BlkifStatus.Okay;
        }

        long nanoseconds = Setup.Options.TimeProvider.GetElapsedTime(context.StartTimestamp, _now).Ticks * 100;
        Statistics.RecordCompleted(request.Kind, request.Length, status == BlkifStatus.Okay, nanoseconds);
        WriteResponse(context, request.Id, request.ResponseOperation, status);

        _inFlightIo--;
        if (request.Drains)
        {
            _exclusiveInFlight = false;
        }

        ReleaseContext(context);
        TryDispatchBlocked();
    }

    /// <summary>Answers a request that was refused before any I/O.</summary>
    private void Refuse(RequestContext context, RequestCheck check)
    {
        short status = check.ToStatus();
        if (status == BlkifStatus.EOpNotSupp)
        {
            Statistics.UnsupportedRequest();
        }
        else
        {
            Statistics.GuestError();
        }

        WriteResponse(context, context.Request.Id, context.Request.ResponseOperation, status);
        ReleaseContext(context);
    }

    private void ReleaseContext(RequestContext context)
    {
        context.Request = default;
        _freeContexts[_freeContextCount++] = context.Index;
    }
}
