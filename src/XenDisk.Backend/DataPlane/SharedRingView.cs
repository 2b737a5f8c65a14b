using System.Runtime.CompilerServices;
using XenDisk.Abi;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The back end's view of a mapped blkif shared ring (xen/include/public/io/ring.h): the four
/// free-running indices in the header and the slots behind it. Every access to the indices is a
/// single volatile 32-bit load or store: the frontend changes them concurrently. Slots are only ever
/// copied wholesale (a request out once, a response in once).
/// Borrowed: the mapping belongs to the control plane and outlives the ring thread.
/// </summary>
internal readonly unsafe struct SharedRingView
{
    private readonly byte* _base;
    private readonly uint _mask;
    private readonly int _slotSize;

    public SharedRingView(nint sharedRing, int entries, int slotSize)
    {
        _base = (byte*)sharedRing;
        _mask = (uint)entries - 1;
        _slotSize = slotSize;
        Entries = entries;
    }

    public int Entries { get; }

    public int SlotSize => _slotSize;

    /// <summary>req_prod with acquire semantics: slots below it are fully written before we read them (ring.h: rmb after reading req_prod).</summary>
    public uint ReadRequestProducer() => Volatile.Read(ref Unsafe.AsRef<uint>(_base + SharedRingHeader.RequestProducerOffset));

    public void WriteRequestEvent(uint value) => Volatile.Write(ref Unsafe.AsRef<uint>(_base + SharedRingHeader.RequestEventOffset), value);

    public uint ReadResponseProducer() => Volatile.Read(ref Unsafe.AsRef<uint>(_base + SharedRingHeader.ResponseProducerOffset));

    /// <summary>rsp_prod with release semantics: the responses below it are visible before the index is (ring.h: wmb before writing rsp_prod).</summary>
    public void PublishResponseProducer(uint value) => Volatile.Write(ref Unsafe.AsRef<uint>(_base + SharedRingHeader.ResponseProducerOffset), value);

    public uint ReadResponseEvent() => Volatile.Read(ref Unsafe.AsRef<uint>(_base + SharedRingHeader.ResponseEventOffset));

    /// <summary>The slot of free-running index <paramref name="index"/> (ring.h RING_GET_REQUEST/RING_GET_RESPONSE).</summary>
    public Span<byte> Slot(uint index) => new(_base + SharedRingHeader.Size + ((index & _mask) * (uint)_slotSize), _slotSize);
}
