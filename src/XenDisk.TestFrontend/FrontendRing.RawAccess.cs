namespace XenDisk.TestFrontend;

// Raw access for tests that play a misbehaving frontend: slots and req_prod written as given.
internal sealed partial class FrontendRing
{
    /// <summary>Raw access: writes bytes into a slot.</summary>
    public unsafe void WriteSlot(uint index, ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > _slotSize)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), $"A slot holds {_slotSize} bytes.");
        }

        bytes.CopyTo(new Span<byte>(SlotAddress(index), _slotSize));
    }

    public unsafe void ReadSlot(uint index, Span<byte> destination) =>
        new ReadOnlySpan<byte>(SlotAddress(index), Math.Min(_slotSize, destination.Length)).CopyTo(destination);

    /// <summary>Raw access: publishes req_prod (and the private producer) as given.</summary>
    public unsafe void SetRequestProducer(uint value)
    {
        lock (_submitLock)
        {
            _requestProducerPrivate = value;
            Volatile.Write(ref Header->RequestProducer, value);
        }
    }

    /// <summary>Raw access: writes a slot at the private producer and pushes it with the usual notify check.</summary>
    public uint PushRaw(ReadOnlySpan<byte> bytes)
    {
        lock (_submitLock)
        {
            uint index = _requestProducerPrivate;
            WriteSlot(index, bytes);
            _requestProducerPrivate++;
            PushRequestsAndCheckNotify();
            return index;
        }
    }
}
