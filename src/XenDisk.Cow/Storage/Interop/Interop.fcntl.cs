using System.Runtime.InteropServices;

namespace XenDisk.Cow.Storage.Interop;

/// <summary>fcntl(2) for open-file-description byte locks (F_OFD_SETLK, F_OFD_GETLK); Linux x86_64 and arm64 ABI.</summary>
internal static partial class LibC
{
    private const string LibraryName = "libc";

    /// <summary>F_OFD_GETLK from &lt;fcntl.h&gt; (Linux 3.15).</summary>
    public const int F_OFD_GETLK = 36;

    /// <summary>F_OFD_SETLK from &lt;fcntl.h&gt;: non-blocking, fails with EAGAIN/EACCES on a conflicting lock.</summary>
    public const int F_OFD_SETLK = 37;

    public const short F_RDLCK = 0;
    public const short F_WRLCK = 1;
    public const short F_UNLCK = 2;

    /// <summary>SEEK_SET for <see cref="Flock.l_whence"/>.</summary>
    public const short SEEK_SET = 0;

    /// <summary>struct flock as the LP64 Linux ABIs lay it out (32 bytes).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 32)]
    public struct Flock
    {
        [FieldOffset(0)] public short l_type;
        [FieldOffset(2)] public short l_whence;
        [FieldOffset(8)] public long l_start;
        [FieldOffset(16)] public long l_len;
        [FieldOffset(24)] public int l_pid;
    }

    // fcntl is variadic; passing the pointer as the third argument is the LP64 SysV and AAPCS64 convention for it.
    [LibraryImport(LibraryName, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, ref Flock lk);
}
