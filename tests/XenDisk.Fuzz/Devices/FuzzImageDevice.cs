using XenDisk.Storage;

namespace XenDisk.Fuzz.Devices;

/// <summary>
/// An image file in memory for fuzzing: sparse (4 KiB pages allocated on first write, so an image
/// that claims a large data area costs nothing until it is written), growable up to a limit, and
/// watching what the engine does to it. A write or growth past the limit (what the input and the
/// target's writes can justify: anything further is a write outside the image), or any write to a
/// read-only device, is recorded as a violation, which the target turns into a finding; the device
/// still answers with the error a file would give. Within the limit it behaves as a file: a write
/// past the end grows it, a read past the end reads zeros, a negative offset is an error.
/// </summary>
public sealed class FuzzImageDevice : IGrowableBlockDevice
{
    private const int PageSize = 4096;

    private readonly Dictionary<long, byte[]> _pages = [];
    private readonly long _sizeLimit;
    private readonly string _name;
    private BlockDeviceInfo _info;

    /// <param name="contents">The file's bytes; its length is the file's size unless <paramref name="size"/> is larger.</param>
    /// <param name="size">The file's size (the bytes past <paramref name="contents"/> read as zeros).</param>
    /// <param name="sizeLimit">The largest size the engine may grow the file to before it counts as a violation.</param>
    public FuzzImageDevice(string name, ReadOnlySpan<byte> contents, long size, long sizeLimit, bool readOnly)
    {
        _name = name;
        _sizeLimit = sizeLimit;
        for (int done = 0; done < contents.Length; done += PageSize)
        {
            ReadOnlySpan<byte> chunk = contents.Slice(done, Math.Min(PageSize, contents.Length - done));
            if (chunk.ContainsAnyExcept((byte)0))
            {
                chunk.CopyTo(Page(done));
            }
        }
        _info = MakeInfo(Math.Max(size, contents.Length), readOnly);
    }

    /// <summary>The first rule the engine broke on this device, or null.</summary>
    public string? Violation { get; private set; }

    /// <summary>Writes the engine made that completed.</summary>
    public int Writes { get; private set; }

    public BlockDeviceInfo Info => _info;

    /// <summary>Throws a finding for the first violation any of <paramref name="devices"/> recorded.</summary>
    public static void ThrowIfViolated(params ReadOnlySpan<FuzzImageDevice> devices)
    {
        foreach (FuzzImageDevice device in devices)
        {
            FuzzFindingException.Check(device.Violation is null, device.Violation ?? "");
        }
    }

    public bool CompletesInline => true;

    /// <summary>The file's bytes, for reopening it as the next process would.</summary>
    public byte[] ToArray()
    {
        byte[] bytes = new byte[checked((int)_info.SizeBytes)];
        foreach ((long index, byte[] page) in _pages)
        {
            long offset = index * PageSize;
            if (offset < bytes.Length)
            {
                page.AsSpan(0, (int)Math.Min(PageSize, bytes.Length - offset)).CopyTo(bytes.AsSpan((int)offset));
            }
        }
        return bytes;
    }

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (offset < 0)
        {
            // pread answers EINVAL: an error for that request, harmless to the file.
            return IoStatus.OutOfRange;
        }
        long position = offset;
        foreach (IoBuffer buffer in buffers)
        {
            // As pread on a file: bytes past the end read as zeros here (a short read the engine pads).
            Copy(position, buffer.AsSpan(), toDevice: false);
            position += buffer.Length;
        }
        return IoStatus.Ok;
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        long total = 0;
        foreach (IoBuffer buffer in buffers)
        {
            total += buffer.Length;
        }
        if (_info.ReadOnly)
        {
            Record($"write of {total} bytes at {offset} to the read-only {_name}");
            return IoStatus.ReadOnly;
        }
        if (offset < 0 || offset > _sizeLimit - total)
        {
            Record($"write of {total} bytes at {offset}, outside the {_info.SizeBytes}-byte {_name} and past the {_sizeLimit} bytes its input and writes justify");
            return IoStatus.OutOfRange;
        }
        if (offset + total > _info.SizeBytes)
        {
            // As pwrite does past the end of a file (a last cluster the file ends inside, say): the file grows.
            _info = MakeInfo(offset + total, _info.ReadOnly);
        }
        long position = offset;
        foreach (IoBuffer buffer in buffers)
        {
            Copy(position, buffer.AsSpan(), toDevice: true);
            position += buffer.Length;
        }
        Writes++;
        return IoStatus.Ok;
    }

    public IoStatus Flush() => IoStatus.Ok;

    public IoStatus Discard(long offset, long length, bool secure)
    {
        if (_info.ReadOnly)
        {
            Record($"discard at {offset} on the read-only {_name}");
            return IoStatus.ReadOnly;
        }
        if (secure)
        {
            return IoStatus.NotSupported;
        }
        if (offset < 0 || length < 0 || offset > _info.SizeBytes - length)
        {
            Record($"discard of {length} bytes at {offset} outside the {_info.SizeBytes}-byte {_name}");
            return IoStatus.OutOfRange;
        }
        for (long position = offset; position < offset + length;)
        {
            long index = position / PageSize;
            int within = (int)(position % PageSize);
            int count = (int)Math.Min(PageSize - within, offset + length - position);
            if (_pages.TryGetValue(index, out byte[]? page))
            {
                page.AsSpan(within, count).Clear();
            }
            position += count;
        }
        return IoStatus.Ok;
    }

    public BlockDeviceInfo Refresh() => _info;

    public IoStatus EnsureSize(long minimumBytes)
    {
        if (_info.ReadOnly)
        {
            Record($"growing the read-only {_name}");
            return IoStatus.ReadOnly;
        }
        if (minimumBytes > _sizeLimit)
        {
            Record($"growing the {_name} to {minimumBytes} bytes, past the {_sizeLimit} its input and writes justify");
            return IoStatus.NoSpace;
        }
        if (minimumBytes > _info.SizeBytes)
        {
            _info = MakeInfo(minimumBytes, _info.ReadOnly);
        }
        return IoStatus.Ok;
    }

    public void Dispose()
    {
    }

    private void Record(string violation) => Violation ??= violation;

    private void Copy(long position, Span<byte> span, bool toDevice)
    {
        int done = 0;
        while (done < span.Length)
        {
            long at = position + done;
            long index = at / PageSize;
            int within = (int)(at % PageSize);
            int count = Math.Min(PageSize - within, span.Length - done);
            Span<byte> part = span.Slice(done, count);
            if (toDevice)
            {
                part.CopyTo(Page(at).AsSpan(within));
            }
            else if (at < _info.SizeBytes && _pages.TryGetValue(index, out byte[]? page))
            {
                int inside = (int)Math.Min(count, _info.SizeBytes - at);
                page.AsSpan(within, inside).CopyTo(part);
                part[inside..].Clear();
            }
            else
            {
                part.Clear();
            }
            done += count;
        }
    }

    private byte[] Page(long offset)
    {
        long index = offset / PageSize;
        if (!_pages.TryGetValue(index, out byte[]? page))
        {
            page = new byte[PageSize];
            _pages[index] = page;
        }
        return page;
    }

    private BlockDeviceInfo MakeInfo(long size, bool readOnly) => new()
    {
        SizeBytes = size,
        ReadOnly = readOnly,
        SupportsDiscard = true,
        DiscardZeroes = true,
        HasVolatileCache = true,
        Description = _name,
    };
}
