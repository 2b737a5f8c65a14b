using System.Runtime.CompilerServices;
using XenDisk.Abi;
using XenDisk.Xen;

namespace XenDisk.TestFrontend;

// Consuming responses: the completion thread, RING_FINAL_CHECK_FOR_RESPONSES, matching each response
// to its shadow (anything else counts as a protocol violation) and completing the request.
internal sealed partial class FrontendRing
{
    private uint _responseConsumer;
    private Thread? _completionThread;
    private volatile bool _paused;
    private long _protocolViolations;

    public void PauseCompletions() => _paused = true;

    /// <summary>Resumes consumption; with <paramref name="skipUnconsumed"/>, responses that arrived meanwhile are dropped unread.</summary>
    public unsafe void ResumeCompletions(bool skipUnconsumed)
    {
        if (skipUnconsumed)
        {
            _responseConsumer = Volatile.Read(ref Header->ResponseProducer);
        }

        _paused = false;

        // Wake our own completion thread: it sets rsp_event again, which it skipped while paused.
        _events.Interrupt();
    }

    private void CompletionLoop()
    {
        while (!_stopping)
        {
            // -1 means Interrupt: a stop request, or a resume that wants the ring looked at.
            int port = _events.WaitPending(-1);
            if (_stopping)
            {
                break;
            }

            if (!_paused && !_halted)
            {
                ConsumeResponses();
            }

            if (port >= 0)
            {
                _events.Unmask((uint)port);
            }
        }
    }

    /// <summary>
    /// Consumes responses up to rsp_prod, then RING_FINAL_CHECK_FOR_RESPONSES: set rsp_event to
    /// the next index, full barrier, look again - a response pushed in between is handled now,
    /// and one pushed after will see rsp_event and notify.
    /// </summary>
    private unsafe void ConsumeResponses()
    {
        while (true)
        {
            uint producer = Volatile.Read(ref Header->ResponseProducer);
            if (unchecked(producer - _responseConsumer) > (uint)Entries)
            {
                // blkfront: "illegal number of responses" - the ring cannot be trusted any more.
                Interlocked.Increment(ref _protocolViolations);
                _halted = true;
                return;
            }

            while (_responseConsumer != producer)
            {
                HandleResponse(_responseConsumer);
                _responseConsumer++;
            }

            Volatile.Write(ref Header->ResponseEvent, _responseConsumer + 1);
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref Header->ResponseProducer) == _responseConsumer)
            {
                return;
            }
        }
    }

    private unsafe void HandleResponse(uint index)
    {
        byte* slot = SlotAddress(index);
        ulong id;
        byte operation;
        short status;

        // Copy the response out of shared memory once.
        if (Protocol == BlkifProtocol.X86_32)
        {
            BlkifResponse32 response = Unsafe.ReadUnaligned<BlkifResponse32>(slot);
            (id, operation, status) = (response.Id, response.Operation, response.Status);
        }
        else
        {
            BlkifResponse64 response = Unsafe.ReadUnaligned<BlkifResponse64>(slot);
            (id, operation, status) = (response.Id, response.Operation, response.Status);
        }

        uint shadowIndex = (uint)id;
        RequestShadow? shadow = shadowIndex < (uint)_shadows.Length ? _shadows[shadowIndex] : null;
        bool outstanding;
        lock (_submitLock)
        {
            outstanding = shadow is not null && shadow.InUse && shadow.Id == id;
        }

        if (!outstanding)
        {
            Interlocked.Increment(ref _protocolViolations);
            return;
        }

        if (operation != shadow!.Operation && operation != shadow.DataOperation)
        {
            Interlocked.Increment(ref _protocolViolations);
        }

        Complete(shadow, status);
    }

    private void Complete(RequestShadow shadow, short status)
    {
        if (shadow.DataOperation == BlkifOperation.Read && status == BlkifStatus.Okay && !shadow.ReadDestination.IsEmpty)
        {
            Span<byte> destination = shadow.ReadDestination.Span;
            for (int i = 0; i < shadow.OwnedPageCount; i++)
            {
                int offset = i * XenPage.Size;
                int chunk = Math.Min(XenPage.Size, destination.Length - offset);
                shadow.Pages[i].Page.Span[..chunk].CopyTo(destination.Slice(offset, chunk));
            }
        }

        for (int i = 0; i < shadow.OwnedPageCount; i++)
        {
            Release(shadow.Pages[i], shadow.PagePooled[i]);
        }

        for (int i = 0; i < shadow.IndirectCount; i++)
        {
            Release(shadow.IndirectPages[i], shadow.IndirectPooled[i]);
        }

        IRequestCompletion? completion = shadow.Completion;
        int token = shadow.Token;
        lock (_submitLock)
        {
            shadow.InUse = false;
            shadow.Completion = null;
            shadow.ReadDestination = default;
            shadow.Generation++;
            _freeShadows[_freeCount++] = shadow.Index;
            _outstanding--;
        }

        _slots.Release();
        completion?.OnCompleted(token, status);
    }
}
