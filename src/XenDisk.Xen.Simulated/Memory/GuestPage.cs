using XenDisk.Abi;

namespace XenDisk.Xen.Simulated;

/// <summary>
/// One 4 KiB page of a simulated guest's memory, seen through the guest's own mapping.
/// Ownership: allocated by <see cref="SimulatedDomain.AllocatePage"/> and returned with
/// <see cref="SimulatedDomain.FreePage"/>; the address stays valid until the hypervisor is disposed.
/// </summary>
public readonly struct GuestPage : IEquatable<GuestPage>
{
    internal GuestPage(uint frame, nint address)
    {
        Frame = frame;
        Address = address;
    }

    /// <summary>The guest frame number (the page's index in the guest's memory).</summary>
    public uint Frame { get; }

    /// <summary>Where the guest sees the page in this process.</summary>
    public nint Address { get; }

    public bool IsEmpty => Address == 0;

    public unsafe Span<byte> Span => new((void*)Address, XenPage.Size);

    public bool Equals(GuestPage other) => Frame == other.Frame && Address == other.Address;

    public override bool Equals(object? obj) => obj is GuestPage other && Equals(other);

    public override int GetHashCode() => HashCode.Combine(Frame, Address);

    public static bool operator ==(GuestPage left, GuestPage right) => left.Equals(right);

    public static bool operator !=(GuestPage left, GuestPage right) => !left.Equals(right);
}

/// <summary>
/// Contiguous guest pages (consecutive frames, hence one contiguous address range in the guest's
/// view): what a frontend needs for a multi-page shared ring.
/// </summary>
public readonly struct GuestPageRange
{
    internal GuestPageRange(uint firstFrame, int count, nint address)
    {
        FirstFrame = firstFrame;
        Count = count;
        Address = address;
    }

    public uint FirstFrame { get; }

    public int Count { get; }

    public nint Address { get; }

    public int Length => Count * XenPage.Size;

    public GuestPage this[int index] =>
        (uint)index < (uint)Count ? new GuestPage(FirstFrame + (uint)index, Address + (index * XenPage.Size)) : throw new ArgumentOutOfRangeException(nameof(index));

    public unsafe Span<byte> Span => new((void*)Address, Length);
}
