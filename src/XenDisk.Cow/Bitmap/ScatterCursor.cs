using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

/// <summary>
/// Walks a caller's scatter list front to back, handing out consecutive byte ranges of it as
/// smaller scatter lists: one request split into runs (overlay, base, zeros) without copying data.
/// The buffers stay the caller's; the pieces borrow them for the duration of the call.
/// </summary>
internal ref struct ScatterCursor
{
    private readonly ReadOnlySpan<IoBuffer> _buffers;
    private int _index;
    private int _offsetInBuffer;

    public ScatterCursor(ReadOnlySpan<IoBuffer> buffers)
    {
        _buffers = buffers;
    }

    /// <summary>
    /// Describes the next <paramref name="length"/> bytes in <paramref name="destination"/> (which needs
    /// room for as many entries as the whole list) and returns how many entries that took.
    /// </summary>
    public int Take(long length, scoped Span<IoBuffer> destination)
    {
        int count = 0;
        while (length > 0)
        {
            IoBuffer buffer = _buffers[_index];
            int available = buffer.Length - _offsetInBuffer;
            if (available == 0)
            {
                _index++;
                _offsetInBuffer = 0;
                continue;
            }
            int taken = (int)Math.Min(available, length);
            destination[count++] = new IoBuffer(buffer.Address + _offsetInBuffer, taken);
            _offsetInBuffer += taken;
            length -= taken;
        }
        return count;
    }
}
