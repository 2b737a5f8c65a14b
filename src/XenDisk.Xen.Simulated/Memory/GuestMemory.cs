using System.Runtime.InteropServices;
using XenDisk.Abi;
using Tmds.Linux;
using XenDisk.Libc;

namespace XenDisk.Xen.Simulated.Memory;

/// <summary>
/// A guest's memory: a memfd of MemoryPages pages, mapped MAP_SHARED as the guest's own view.
/// Because every page is a page of that file, a grant map can mmap the very same page a second
/// time elsewhere in the process, which makes backend and guest share bytes exactly as Xen's
/// grant mappings do. Frames are handed out by a first-fit bitmap allocator.
/// </summary>
internal sealed unsafe class GuestMemory
{
    private readonly Lock _allocationLock = new();
    private readonly bool[] _used;
    private int _fileDescriptor;
    private int _searchHint;

    private GuestMemory(int fileDescriptor, nint baseAddress, int pageCount)
    {
        _fileDescriptor = fileDescriptor;
        BaseAddress = baseAddress;
        PageCount = pageCount;
        _used = new bool[pageCount];
    }

    public nint BaseAddress { get; }

    public int PageCount { get; }

    public long ByteLength => (long)PageCount * XenPage.Size;

    /// <summary>The memfd; -1 once the domain is destroyed (no new grant mapping can then be made).</summary>
    public int FileDescriptor => Volatile.Read(ref _fileDescriptor);

    public static GuestMemory Create(string name, int pageCount)
    {
        int fd;
        fixed (byte* memfdName = CString.Utf8("xendisk-guest-" + name))
        {
            fd = LibC.memfd_create(memfdName, LibC.MFD_CLOEXEC);
        }
        if (fd < 0)
        {
            throw new XenException("memfd_create", Marshal.GetLastPInvokeError());
        }

        long length = (long)pageCount * XenPage.Size;
        if (LibC.ftruncate(fd, length) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            LibC.close(fd);
            throw new XenException("ftruncate", errno);
        }

        nint view = (nint)LibC.mmap(null, (size_t)(ulong)length, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_SHARED, fd, 0);
        if (view == (nint)LibC.MAP_FAILED)
        {
            int errno = Marshal.GetLastPInvokeError();
            LibC.close(fd);
            throw new XenException("mmap", errno);
        }

        return new GuestMemory(fd, view, pageCount);
    }

    public nint FrameAddress(uint frame) => BaseAddress + (nint)((long)frame * XenPage.Size);

    public bool IsValidFrame(uint frame) => frame < (uint)PageCount;

    public bool IsAllocated(uint frame)
    {
        lock (_allocationLock)
        {
            return frame < (uint)PageCount && _used[frame];
        }
    }

    /// <summary>First-fit search for <paramref name="count"/> consecutive free frames.</summary>
    public bool TryAllocate(int count, out uint firstFrame)
    {
        lock (_allocationLock)
        {
            for (int pass = 0; pass < 2; pass++)
            {
                int start = pass == 0 ? _searchHint : 0;
                int end = pass == 0 ? PageCount : Math.Min(PageCount, _searchHint + count);
                int run = 0;
                for (int frame = start; frame < end; frame++)
                {
                    run = _used[frame] ? 0 : run + 1;
                    if (run == count)
                    {
                        int first = frame - count + 1;
                        for (int i = first; i <= frame; i++)
                        {
                            _used[i] = true;
                        }

                        _searchHint = frame + 1 == PageCount ? 0 : frame + 1;
                        firstFrame = (uint)first;
                        return true;
                    }
                }
            }
        }

        firstFrame = 0;
        return false;
    }

    /// <summary>Returns frames to the allocator; freeing a frame that is not allocated is a caller bug.</summary>
    public void Free(uint firstFrame, int count)
    {
        lock (_allocationLock)
        {
            if ((ulong)firstFrame + (ulong)count > (ulong)PageCount)
            {
                throw new ArgumentOutOfRangeException(nameof(firstFrame));
            }

            for (uint frame = firstFrame; frame < firstFrame + (uint)count; frame++)
            {
                if (!_used[frame])
                {
                    throw new InvalidOperationException($"Guest frame {frame} is not allocated.");
                }

                _used[frame] = false;
            }
        }
    }

    /// <summary>
    /// Closes the memfd: no new grant mapping can be made, existing mappings keep the file alive
    /// (as a real domain lingers as a zombie while foreign mappings exist).
    /// </summary>
    public void CloseFile()
    {
        int fd = Interlocked.Exchange(ref _fileDescriptor, -1);
        if (fd >= 0)
        {
            LibC.close(fd);
        }
    }

    /// <summary>
    /// Replaces the guest's view with private anonymous memory, releasing the guest's pages while
    /// keeping the addresses valid: a straggling thread that still touches a ring after the
    /// hypervisor is gone reads zeros instead of crashing the process.
    /// </summary>
    public void ParkView()
    {
        CloseFile();
        AddressRange.Park(BaseAddress, ByteLength);
    }
}

/// <summary>Helpers over raw address ranges.</summary>
internal static unsafe class AddressRange
{
    /// <summary>Maps private, unreserved anonymous memory over a range (see <see cref="GuestMemory.ParkView"/>).</summary>
    public static void Park(nint address, long length)
    {
        LibC.mmap((void*)address, (size_t)(ulong)length, LibC.PROT_READ | LibC.PROT_WRITE,
            LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS | LibC.MAP_FIXED | LibC.MAP_NORESERVE, -1, 0);
    }
}
