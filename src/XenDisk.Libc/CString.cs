using System.Text;

namespace XenDisk.Libc;

/// <summary>Paths for Tmds.LibC's calls, which take <c>const char*</c> as a byte pointer.</summary>
public static class CString
{
    /// <summary>
    /// <paramref name="value"/> as NUL-terminated UTF-8, to pin with <c>fixed</c>. An embedded NUL would
    /// silently shorten the path the kernel sees, so it is refused.
    /// </summary>
    public static byte[] Utf8(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException("A path handed to libc cannot contain a NUL character.", nameof(value));
        }
        byte[] bytes = new byte[Encoding.UTF8.GetByteCount(value) + 1];
        Encoding.UTF8.GetBytes(value, bytes);
        return bytes;
    }
}
