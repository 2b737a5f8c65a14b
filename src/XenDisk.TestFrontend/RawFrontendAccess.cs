using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.TestFrontend;

/// <summary>
/// Hostile controls, for testing how a backend copes with a guest that does not follow blkif.h:
/// arbitrary slot bytes, arbitrary producer indices, stray notifications, hand-made grants (for
/// indirect pages), direct reads of responses, and arbitrary xenstore values.
/// Completions: while a queue is paused, the frontend does not consume its responses, so a test
/// can read them raw without them counting as protocol violations.
/// Ownership: pages granted here are ended (if the backend let go) when the frontend is disposed.
/// </summary>
public sealed class RawFrontendAccess
{
    private readonly BlockFrontend _frontend;
    private readonly SimulatedDomain _guest;
    private readonly Lock _lock = new();
    private readonly List<GrantedPage> _grants = [];

    internal RawFrontendAccess(BlockFrontend frontend, SimulatedDomain guest)
    {
        _frontend = frontend;
        _guest = guest;
    }

    /// <summary>The guest's xenstore connection.</summary>
    public IXenStore XenStore => _frontend.XenStore;

    public int SlotSize(int queue) => Ring(queue).SlotSize;

    public int RingEntries(int queue) => Ring(queue).Entries;

    public nint RingAddress(int queue) => Ring(queue).RingAddress;

    public IReadOnlyList<uint> RingRefs(int queue) => Ring(queue).RingRefs;

    public uint EventChannel(int queue) => Ring(queue).EventChannel;

    /// <summary>Writes (at most a slot's worth of) bytes into slot <paramref name="index"/> modulo the ring size.</summary>
    public void WriteSlot(int queue, uint index, ReadOnlySpan<byte> bytes) => Ring(queue).WriteSlot(index, bytes);

    /// <summary>Writes a request struct into slot <paramref name="index"/>.</summary>
    public void WriteSlot<T>(int queue, uint index, in T request)
        where T : unmanaged => Ring(queue).WriteSlot(index, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in request)));

    /// <summary>Writes the slot at the private producer, publishes it and notifies if req_event asks for it. Returns the slot index.</summary>
    public uint PushRequest<T>(int queue, in T request)
        where T : unmanaged => Ring(queue).PushRaw(MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in request)));

    public unsafe uint RequestProducer(int queue) => Volatile.Read(ref Ring(queue).Header->RequestProducer);

    /// <summary>Publishes any req_prod, impossible ones included.</summary>
    public void SetRequestProducer(int queue, uint value) => Ring(queue).SetRequestProducer(value);

    public unsafe uint RequestEvent(int queue) => Volatile.Read(ref Ring(queue).Header->RequestEvent);

    public unsafe uint ResponseProducer(int queue) => Volatile.Read(ref Ring(queue).Header->ResponseProducer);

    public unsafe uint ResponseEvent(int queue) => Volatile.Read(ref Ring(queue).Header->ResponseEvent);

    /// <summary>Kicks the backend without pushing anything. Returns 0 or a negative errno.</summary>
    public int Notify(int queue) => Ring(queue).Notify();

    public void ReadSlot(int queue, uint index, Span<byte> destination) => Ring(queue).ReadSlot(index, destination);

    /// <summary>The response in slot <paramref name="index"/>, in the negotiated ABI.</summary>
    public (ulong Id, byte Operation, short Status) ReadResponse(int queue, uint index)
    {
        Span<byte> bytes = stackalloc byte[BlkifResponse64.Size];
        Ring(queue).ReadSlot(index, bytes);
        if (_frontend.NegotiatedFrontendFeatures.Protocol == BlkifProtocol.X86_32)
        {
            BlkifResponse32 response = MemoryMarshal.Read<BlkifResponse32>(bytes);
            return (response.Id, response.Operation, response.Status);
        }
        else
        {
            BlkifResponse64 response = MemoryMarshal.Read<BlkifResponse64>(bytes);
            return (response.Id, response.Operation, response.Status);
        }
    }

    /// <summary>Waits until rsp_prod reaches <paramref name="target"/> (polling); false on time-out.</summary>
    public async Task<bool> WaitForResponseProducerAsync(int queue, uint target, TimeSpan timeout)
    {
        DateTime deadline = DateTime.UtcNow + timeout;
        while (unchecked((int)(ResponseProducer(queue) - target)) < 0)
        {
            if (DateTime.UtcNow > deadline)
            {
                return false;
            }

            await Task.Delay(1).ConfigureAwait(false);
        }

        return true;
    }

    /// <summary>Stops the frontend from consuming responses on the queue.</summary>
    public void PauseCompletions(int queue) => Ring(queue).PauseCompletions();

    /// <summary>Resumes consuming; by default responses that arrived while paused are skipped.</summary>
    public void ResumeCompletions(int queue, bool skipUnconsumed = true) => Ring(queue).ResumeCompletions(skipUnconsumed);

    /// <summary>Allocates a guest page and grants it to the backend (e.g. a hand-made indirect page).</summary>
    public GrantedPage GrantPage(bool readOnly = false)
    {
        GuestPage page = _guest.AllocatePage();
        page.Span.Clear();
        var granted = new GrantedPage(page, _guest.GrantAccess(_frontend.BackendDomainId, page, readOnly));
        lock (_lock)
        {
            _grants.Add(granted);
        }

        return granted;
    }

    /// <summary>Ends a grant made by <see cref="GrantPage"/>; false while the backend has it mapped.</summary>
    public bool EndGrant(GrantedPage page)
    {
        if (!_guest.EndAccess(page.GrantRef))
        {
            return false;
        }

        lock (_lock)
        {
            _grants.Remove(page);
        }

        _guest.FreePage(page.Page);
        return true;
    }

    /// <summary>Writes any value under the frontend directory (or an absolute path).</summary>
    public void WriteKey(string key, string value) =>
        XenStore.Write(XenStoreTransaction.None, key.StartsWith('/') ? key : _frontend.FrontendPath + "/" + key, value);

    public void RemoveKey(string key) =>
        XenStore.Remove(XenStoreTransaction.None, key.StartsWith('/') ? key : _frontend.FrontendPath + "/" + key);

    internal void EndGrants()
    {
        lock (_lock)
        {
            foreach (GrantedPage page in _grants.ToList())
            {
                if (_guest.EndAccess(page.GrantRef))
                {
                    _guest.FreePage(page.Page);
                    _grants.Remove(page);
                }
            }
        }
    }

    private FrontendRing Ring(int queue)
    {
        IReadOnlyList<FrontendRing> rings = _frontend.Rings;
        return (uint)queue < (uint)rings.Count ? rings[queue] : throw new ArgumentOutOfRangeException(nameof(queue), "No such queue (is the frontend connected?).");
    }
}
