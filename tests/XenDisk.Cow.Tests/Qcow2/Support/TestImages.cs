using System.Buffers.Binary;
using XenDisk.Cow.Tests.Support;

namespace XenDisk.Cow.Tests.Qcow2.Support;

/// <summary>Looks into qcow2 image bytes the way a crash left them.</summary>
internal static class TestImages
{
    /// <summary>incompatible_features (header byte 72, big-endian) has bit 0 ("dirty") set.</summary>
    public static bool IsDirty(ReadOnlySpan<byte> image) =>
        image.Length >= 80 && BinaryPrimitives.ReadUInt32BigEndian(image) == 0x514649fb && (BinaryPrimitives.ReadUInt64BigEndian(image[72..]) & 1) != 0;

    /// <summary>
    /// Every sector value the file held at some point before log position <paramref name="prefix"/>
    /// (its first contents, each sector of each write, zeros): what a cluster whose new data a power
    /// loss dropped can read as (see <see cref="SectorHistory.CheckDurable"/>).
    /// </summary>
    public static Func<ulong, bool> FormerContents(byte[] initial, IReadOnlyList<DeviceOperation> log, int prefix)
    {
        HashSet<ulong> values = [SectorHistory.Hash(new byte[SectorHistory.SectorSize])];
        for (int s = 0; s + SectorHistory.SectorSize <= initial.Length; s += SectorHistory.SectorSize)
        {
            values.Add(SectorHistory.Hash(initial.AsSpan(s, SectorHistory.SectorSize)));
        }
        for (int i = 0; i < prefix && i < log.Count; i++)
        {
            if (log[i] is { Kind: DeviceOperationKind.Write, Data: byte[] data })
            {
                for (int s = 0; s + SectorHistory.SectorSize <= data.Length; s += SectorHistory.SectorSize)
                {
                    values.Add(SectorHistory.Hash(data.AsSpan(s, SectorHistory.SectorSize)));
                }
            }
        }
        return values.Contains;
    }
}
