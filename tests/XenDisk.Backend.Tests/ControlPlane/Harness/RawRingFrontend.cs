using System.Globalization;
using XenDisk.Abi;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.Harness;

/// <summary>How a multi-page ring is announced (blkif.h, and the older spelling).</summary>
public enum RawRingKeys
{
    /// <summary>A single "ring-ref" (one page).</summary>
    SingleRef,
    /// <summary>"ring-page-order" + "ring-ref0".."ring-ref{N-1}".</summary>
    PageOrder,
    /// <summary>"num-ring-pages" + "ring-ref0".."ring-ref{N-1}".</summary>
    NumRingPages,
}

/// <summary>
/// The xenbus half of a frontend and nothing more: allocates and grants ring pages, allocates
/// event channels and publishes the keys, so that control-plane tests can drive negotiation and
/// touch the shared ring header directly, without a request in flight.
/// </summary>
public sealed unsafe class RawRingFrontend : IDisposable
{
    private readonly BackendTestBed _bed;
    private readonly SimulatedDomain _guest;
    private readonly List<(GuestPageRange Pages, uint[] Refs, IEventChannels Channels, uint Port)> _queues = [];

    public RawRingFrontend(BackendTestBed bed, DiskAttachment attachment)
    {
        _bed = bed;
        Attachment = attachment;
        _guest = attachment.Guest;
    }

    public DiskAttachment Attachment { get; }

    public int QueueCount => _queues.Count;

    public uint Port(int queue) => _queues[queue].Port;

    public uint[] RingRefs(int queue) => _queues[queue].Refs;

    /// <summary>Grants fresh rings and writes every key, then Initialised.</summary>
    public void Publish(int queues = 1, int ringPages = 1, RawRingKeys spelling = RawRingKeys.SingleRef, string? protocol = null, bool persistent = false)
    {
        ReleaseRings();
        RemoveRingKeys();
        uint backendId = Attachment.Backend.Id;
        if (spelling == RawRingKeys.PageOrder)
        {
            Write(BlkifKeys.RingPageOrder, Text(System.Numerics.BitOperations.Log2((uint)ringPages)));
        }
        else if (spelling == RawRingKeys.NumRingPages)
        {
            Write(BlkifKeys.NumRingPages, Text(ringPages));
        }

        if (queues > 1)
        {
            Write(BlkifKeys.MultiQueueNumQueues, Text(queues));
        }

        if (protocol is not null)
        {
            Write(BlkifKeys.Protocol, protocol);
        }

        Write(BlkifKeys.FeaturePersistent, persistent ? "1" : "0");
        for (int q = 0; q < queues; q++)
        {
            GuestPageRange pages = _guest.AllocatePages(ringPages);
            pages.Span.Clear();

            // SHARED_RING_INIT: both producers at 0, both event thresholds at 1.
            var header = (SharedRingHeader*)pages.Address;
            header->RequestEvent = 1;
            header->ResponseEvent = 1;

            var refs = new uint[ringPages];
            for (int i = 0; i < ringPages; i++)
            {
                refs[i] = _guest.GrantAccess(backendId, pages[i], readOnly: false);
            }

            IEventChannels channels = _guest.Platform.OpenEventChannels();
            uint port = channels.BindUnboundPort(backendId);
            _queues.Add((pages, refs, channels, port));

            string prefix = queues > 1 ? BlkifKeys.Queue(q) + "/" : "";
            for (int i = 0; i < ringPages; i++)
            {
                Write(prefix + (spelling == RawRingKeys.SingleRef ? BlkifKeys.RingRef : BlkifKeys.RingRefN(i)), Text(refs[i]));
            }

            Write(prefix + BlkifKeys.EventChannel, Text(port));
        }

        SetState(XenbusState.Initialised);
    }

    /// <summary>Forgets the keys of an earlier connection, as a frontend that reconnects with another shape must.</summary>
    private void RemoveRingKeys()
    {
        foreach (string key in (string[])[BlkifKeys.RingPageOrder, BlkifKeys.NumRingPages, BlkifKeys.MultiQueueNumQueues, BlkifKeys.RingRef, BlkifKeys.Protocol])
        {
            _bed.RemoveFrontendKey(Attachment, key);
        }

        for (int i = 0; i < 16; i++)
        {
            _bed.RemoveFrontendKey(Attachment, BlkifKeys.RingRefN(i));
            _bed.RemoveFrontendKey(Attachment, BlkifKeys.Queue(i));
        }
    }

    public void SetState(XenbusState state) => _bed.SetFrontendState(Attachment, state);

    public void Write(string key, string value) => _bed.WriteFrontend(Attachment, key, value);

    public SharedRingHeader* Header(int queue) => (SharedRingHeader*)_queues[queue].Pages.Address;

    /// <summary>Publishes a request producer index and kicks the backend, as a (possibly lying) frontend does.</summary>
    public void PushRequestProducer(int queue, uint requestProducer)
    {
        Volatile.Write(ref Header(queue)->RequestProducer, requestProducer);
        _queues[queue].Channels.Notify(_queues[queue].Port);
    }

    /// <summary>True when no grant of this frontend's rings is mapped by anyone.</summary>
    public bool RingsUnmapped => _queues.All(q => q.Refs.All(r => !_guest.IsMapped(r)));

    public void Dispose() => ReleaseRings();

    private void ReleaseRings()
    {
        foreach ((GuestPageRange pages, uint[] refs, IEventChannels channels, uint _) in _queues)
        {
            bool allEnded = true;
            foreach (uint grantRef in refs)
            {
                allEnded &= _guest.EndAccess(grantRef);
            }

            // A page still mapped by the backend must not be reused; leaking it in a test is harmless.
            if (allEnded)
            {
                _guest.FreePages(pages);
            }

            channels.Dispose();
        }

        _queues.Clear();
    }

    private static string Text(long value) => value.ToString(CultureInfo.InvariantCulture);
}
