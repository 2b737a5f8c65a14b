using System.Buffers.Binary;

namespace XenDisk.Storage.Iscsi;

/// <summary>READ CAPACITY (16) parameter data (SBC-3 5.16.2), the fields a disk needs.</summary>
internal readonly record struct ReadCapacity16(ulong LastLba, uint BlockLength, int PhysicalBlockExponent, bool ProvisioningEnabled, bool ReadsZeroAfterUnmap)
{
    /// <summary>
    /// Data shorter than the 32 bytes SBC-3 defines, a block length that is not a power of two from 512
    /// to 64 KiB, or a capacity whose size in bytes does not fit a long (a target can claim any last
    /// LBA), is refused.
    /// </summary>
    public static ReadCapacity16? Parse(ReadOnlySpan<byte> data)
    {
        if (data.Length < 32)
        {
            return null;
        }
        uint blockLength = BinaryPrimitives.ReadUInt32BigEndian(data[8..]);
        if (blockLength is < 512 or > 65536 || !uint.IsPow2(blockLength))
        {
            return null;
        }
        ulong lastLba = BinaryPrimitives.ReadUInt64BigEndian(data);
        if (lastLba >= (ulong)long.MaxValue / blockLength)
        {
            return null;
        }
        return new ReadCapacity16(
            LastLba: lastLba,
            BlockLength: blockLength,
            PhysicalBlockExponent: data[13] & 0x0f,
            ProvisioningEnabled: (data[14] & 0x80) != 0,
            ReadsZeroAfterUnmap: (data[14] & 0x40) != 0);
    }
}

/// <summary>The Block Limits VPD page (B0h, SBC-3 6.6.4): transfer and UNMAP limits, in logical blocks.</summary>
internal readonly record struct BlockLimitsPage(uint MaximumTransferLength, uint MaximumUnmapLbaCount, uint MaximumUnmapDescriptorCount, uint OptimalUnmapGranularity, uint UnmapGranularityAlignment, bool AlignmentValid)
{
    public const int PageCode = 0xb0;

    public static BlockLimitsPage? Parse(ReadOnlySpan<byte> data)
    {
        // A page too short to carry the UNMAP fields (SBC-2 targets send 16 bytes) has no UNMAP limits.
        if (data.Length < 16 || data[1] != PageCode)
        {
            return null;
        }
        uint maxTransfer = BinaryPrimitives.ReadUInt32BigEndian(data[8..]);
        if (data.Length < 36)
        {
            return new BlockLimitsPage(maxTransfer, 0, 0, 0, 0, false);
        }
        uint alignment = BinaryPrimitives.ReadUInt32BigEndian(data[32..]);
        return new BlockLimitsPage(
            MaximumTransferLength: maxTransfer,
            MaximumUnmapLbaCount: BinaryPrimitives.ReadUInt32BigEndian(data[20..]),
            MaximumUnmapDescriptorCount: BinaryPrimitives.ReadUInt32BigEndian(data[24..]),
            OptimalUnmapGranularity: BinaryPrimitives.ReadUInt32BigEndian(data[28..]),
            UnmapGranularityAlignment: alignment & 0x7fffffff,
            AlignmentValid: (alignment & 0x80000000) != 0);
    }
}

/// <summary>The Logical Block Provisioning VPD page (B2h, SBC-3 6.6.6): whether UNMAP is supported (LBPU).</summary>
internal readonly record struct ProvisioningPage(bool UnmapSupported)
{
    public const int PageCode = 0xb2;

    public static ProvisioningPage? Parse(ReadOnlySpan<byte> data) =>
        data.Length < 6 || data[1] != PageCode ? null : new ProvisioningPage((data[5] & 0x80) != 0);
}
