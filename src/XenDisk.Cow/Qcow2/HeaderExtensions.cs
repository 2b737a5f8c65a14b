using System.Buffers.Binary;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Rewrites the header cluster's variable part (=== Header extensions ===): the header's length
/// for its version, the extensions, the end marker and the backing file name after them, as a qcow2
/// writer lays it out. Used when an extension is added or removed (bitmaps) and when the version
/// changes (amend), which moves where the extensions begin. Works on an in-memory header cluster
/// that has already been validated by <see cref="Qcow2HeaderReader"/>.
/// </summary>
internal static class HeaderExtensions
{
    /// <summary>Version 2's fixed header: the fields up to and including snapshots_offset.</summary>
    public const int Version2HeaderLength = 72;

    /// <summary>The version 3 header QEMU writes: 104 bytes of fields, the compression_type byte and padding to 8.</summary>
    public const int Version3HeaderLength = 112;

    public static int HeaderLength(ReadOnlySpan<byte> h) =>
        BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.Version..]) >= 3 ? (int)BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.HeaderLength..]) : Version2HeaderLength;

    /// <summary>The extensions in order (not the end marker), and where the area they occupy ends.</summary>
    public static List<(uint Type, byte[] Data)> Parse(ReadOnlySpan<byte> h, out int end)
    {
        List<(uint, byte[])> extensions = [];
        int position = HeaderLength(h);
        while (position + 8 <= h.Length)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(h[position..]);
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(h[(position + 4)..]);
            if (type == Qcow2Format.ExtensionEnd)
            {
                position += 8;
                break;
            }
            extensions.Add((type, h.Slice(position + 8, length).ToArray()));
            position += 8 + ((length + 7) & ~7);
        }
        end = Math.Min(position, h.Length);
        return extensions;
    }

    /// <summary>
    /// Lays out the header for <paramref name="version"/> with these extensions and the existing
    /// backing file name. Returns how many leading bytes of the cluster changed (to write, rounded
    /// up to sectors by the caller), or -1 when everything does not fit in the cluster (nothing changed then).
    /// </summary>
    public static int Rebuild(Span<byte> h, int version, IReadOnlyList<(uint Type, byte[] Data)> extensions)
    {
        Parse(h, out int oldEnd);
        long backingOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.BackingFileOffset..]);
        int backingSize = (int)BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.BackingFileSize..]);
        byte[] backing = backingOffset != 0 ? h.Slice((int)backingOffset, backingSize).ToArray() : [];
        oldEnd = Math.Max(oldEnd, backingOffset != 0 ? (int)backingOffset + backingSize : 0);
        int oldVersion = (int)BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.Version..]);
        int headerLength = version < 3 ? Version2HeaderLength : oldVersion >= 3 ? HeaderLength(h) : Version3HeaderLength;
        int newEnd = headerLength + extensions.Sum(e => 8 + ((e.Data.Length + 7) & ~7)) + 8 + backing.Length;
        if (newEnd > h.Length)
        {
            return -1;
        }
        if (version >= 3 && oldVersion < 3)
        {
            // New version 3 fields: features, refcount_order (version 2 counts in 16 bits), header_length, compression_type zlib.
            h[Qcow2HeaderField.IncompatibleFeatures..headerLength].Clear();
            BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.RefcountOrder..], 4);
            BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.HeaderLength..], (uint)headerLength);
        }
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.Version..], (uint)version);
        h[headerLength..Math.Max(oldEnd, newEnd)].Clear();
        int position = headerLength;
        foreach ((uint type, byte[] data) in extensions)
        {
            BinaryPrimitives.WriteUInt32BigEndian(h[position..], type);
            BinaryPrimitives.WriteUInt32BigEndian(h[(position + 4)..], (uint)data.Length);
            data.CopyTo(h[(position + 8)..]);
            position += 8 + ((data.Length + 7) & ~7);
        }
        position += 8; // the end marker: type 0, length 0
        if (backing.Length > 0)
        {
            backing.CopyTo(h[position..]);
            BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.BackingFileOffset..], (ulong)position);
        }
        return Math.Max(oldEnd, newEnd);
    }
}
