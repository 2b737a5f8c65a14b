using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class Libc
    {
        // poll(2) is interrupted by signals (EINTR) and must then be restarted.
        internal const int EINTR = 4;

        internal const short POLLIN = 0x001;
        internal const short POLLERR = 0x008;
        internal const short POLLHUP = 0x010;
        internal const short POLLNVAL = 0x020;

        /// <summary>struct pollfd (poll.h): { int fd; short events; short revents; }.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct PollFd
        {
            internal int fd;
            internal short events;
            internal short revents;
        }

        // int poll(struct pollfd *fds, nfds_t nfds, int timeout); -1 + errno on failure (EINTR: retry).
        [LibraryImport(Libraries.Libc, SetLastError = true)]
        internal static unsafe partial int poll(PollFd* fds, nuint nfds, int timeout);
    }
}
