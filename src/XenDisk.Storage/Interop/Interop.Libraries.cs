namespace XenDisk.Storage.Interop;

/// <summary>
/// libc bindings for raw storage I/O, one file per native function (Interop.&lt;c_name&gt;.cs), C names and
/// exact C types kept. Linux x86_64/aarch64 only: the constants below are the asm-generic values.
/// </summary>
internal static partial class Libc
{
    // "libc" resolves to the C library on glibc and musl alike.
    internal const string LibraryName = "libc";
}
