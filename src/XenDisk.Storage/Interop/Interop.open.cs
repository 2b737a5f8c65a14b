using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

internal static partial class Libc
{
    // asm-generic/fcntl.h (x86_64 and aarch64 agree on these; O_DIRECT differs on aarch64, see below).
    internal const int O_RDONLY = 0x0;
    internal const int O_RDWR = 0x2;
    internal const int O_CLOEXEC = 0x80000;
    internal static readonly int O_DIRECT = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x10000 : 0x4000;

    /// <summary>int open(const char *pathname, int flags, mode_t mode);</summary>
    [LibraryImport(LibraryName, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial int open(string pathname, int flags, uint mode);
}
