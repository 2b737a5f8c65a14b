using System.Runtime.InteropServices;
using Tmds.Linux;
using XenDisk.Libc;
using static Tmds.Linux.LibC;

namespace XenDisk.Storage.AsyncIo;

/// <summary>
/// One io_uring instance (io_uring_setup(2)) with its submission and completion rings mapped: the
/// per-thread engine of the data plane. Requests are queued with <see cref="TryGetSubmission"/> and
/// go to the kernel together in the one <see cref="SubmitAndWait"/> call a loop iteration makes
/// (the batching rule of liburing's io_uring_submit_and_wait); completions are read back with
/// <see cref="TryPeekCompletion"/> and <see cref="AdvanceCompletion"/> without a system call.
/// <para>
/// Single-threaded: the thread that owns the ring is the only one that touches it. Memory ordering
/// follows io_uring(7): the SQE and its array slot are written before the SQ tail is published
/// (release); the CQ tail is read with acquire before the CQE it covers, and the CQ head is published
/// with release after the CQE has been read, so the kernel never overwrites an entry being read.
/// </para>
/// <para>
/// Task work: the ring is set up with IORING_SETUP_COOP_TASKRUN (Linux 5.19; Debian 12's dom0 runs
/// 6.1) where the kernel has it, as fio's io_uring engine sets up its own: the work that posts a
/// finished operation's completion then runs when the ring thread next enters the kernel (at the
/// latest, the io_uring_enter it makes before sleeping) instead of an inter-processor interrupt
/// stopping it wherever it runs. IORING_SETUP_DEFER_TASKRUN (6.1) is not used: it withholds every
/// completion, the event channel's included, until an io_uring_enter asks for events, so a kick whose
/// request the loop has already taken off the shared ring ends the next wait at once and costs a
/// QD1 request a third system call (measured: 3.00 against 2.20 per request).
/// </para>
/// <para>
/// Sizes: the caller asks for as many submission entries as it can ever have in flight at once, and
/// the completion ring is twice that (the kernel default), so it cannot overflow.
/// </para>
/// </summary>
public sealed unsafe class IoUring : IDisposable
{
    /// <summary>The largest submission ring a data-plane thread asks for; the kernel allows 32768.</summary>
    public const int MaxEntries = 4096;

    /// <summary>linux/io_uring.h (5.19), newer than the binding's header.</summary>
    private const uint IORING_SETUP_COOP_TASKRUN = 1U << 8;

    private readonly int _fd;
    private readonly void* _sqRing;
    private readonly nuint _sqRingSize;
    private readonly void* _cqRing;
    private readonly nuint _cqRingSize;
    private readonly io_uring_sqe* _sqes;
    private readonly nuint _sqesSize;

    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint _sqMask;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly io_uring_cqe* _cqes;

    // Our private SQ tail: entries between the published tail and this one are filled, not yet submitted.
    private uint _sqTailLocal;
    private uint _sqTailPublished;
    private bool _filesRegistered;
    private bool _buffersRegistered;
    private bool _disposed;

    private IoUring(int fd, in io_uring_params p, void* sqRing, nuint sqRingSize, void* cqRing, nuint cqRingSize, io_uring_sqe* sqes, nuint sqesSize)
    {
        _fd = fd;
        _sqRing = sqRing;
        _sqRingSize = sqRingSize;
        _cqRing = cqRing;
        _cqRingSize = cqRingSize;
        _sqes = sqes;
        _sqesSize = sqesSize;
        byte* sq = (byte*)sqRing;
        byte* cq = (byte*)cqRing;
        _sqHead = (uint*)(sq + p.sq_off.head);
        _sqTail = (uint*)(sq + p.sq_off.tail);
        _sqMask = *(uint*)(sq + p.sq_off.ring_mask);
        SubmissionEntries = *(uint*)(sq + p.sq_off.ring_entries);
        _cqHead = (uint*)(cq + p.cq_off.head);
        _cqTail = (uint*)(cq + p.cq_off.tail);
        _cqMask = *(uint*)(cq + p.cq_off.ring_mask);
        CompletionEntries = *(uint*)(cq + p.cq_off.ring_entries);
        _cqes = (io_uring_cqe*)(cq + p.cq_off.cqes);

        // The SQ array maps ring positions to SQE indices; we fill SQEs in ring order, so the mapping
        // is the identity and is written once (as liburing does).
        uint* array = (uint*)(sq + p.sq_off.array);
        for (uint i = 0; i < SubmissionEntries; i++)
        {
            array[i] = i;
        }

        _sqTailLocal = Volatile.Read(ref *_sqTail);
        _sqTailPublished = _sqTailLocal;
    }

    public uint SubmissionEntries { get; }

    public uint CompletionEntries { get; }

    /// <summary>Queued submissions not yet handed to the kernel.</summary>
    public uint PendingSubmissions => _sqTailLocal - _sqTailPublished;

    /// <summary>io_uring_enter calls made, for the data plane's statistics.</summary>
    public long EnterCalls { get; private set; }

    /// <summary>The most entries one io_uring_enter has handed to the kernel.</summary>
    public uint LargestSubmission { get; private set; }

    /// <summary>
    /// Creates a ring of at least <paramref name="entries"/> submission entries. Returns false with an
    /// operator-readable reason when io_uring is unavailable: the kernel.io_uring_disabled sysctl
    /// (EPERM), a seccomp filter or a kernel without it (ENOSYS), or memory limits (ENOMEM).
    /// </summary>
    public static bool TryCreate(int entries, out IoUring? ring, out string? reason)
    {
        ring = null;
        uint size = (uint)Math.Clamp((int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(entries, 2)), 2, MaxEntries);
        // A kernel older than 5.19 refuses the flag with EINVAL: set up without it.
        io_uring_params p = new() { flags = IORING_SETUP_COOP_TASKRUN };
        int fd = io_uring_setup(size, &p);
        if (fd < 0 && errno == EINVAL)
        {
            p = default;
            fd = io_uring_setup(size, &p);
        }

        if (fd < 0)
        {
            int error = errno;
            reason = error == EPERM ? "io_uring is disabled on this host (sysctl kernel.io_uring_disabled, or a security policy) (errno 1)"
                : error == ENOSYS ? "this kernel or its seccomp filter does not allow io_uring (errno 38)"
                : "io_uring_setup failed: " + Errno.Describe(error);
            return false;
        }

        void* sqRing = null;
        void* cqRing = null;
        void* sqes = null;
        nuint sqRingSize = p.sq_off.array + (p.sq_entries * sizeof(uint));
        nuint cqRingSize = p.cq_off.cqes + (p.cq_entries * (nuint)sizeof(io_uring_cqe));
        nuint sqesSize = p.sq_entries * (nuint)sizeof(io_uring_sqe);
        bool singleMap = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
        if (singleMap)
        {
            sqRingSize = cqRingSize = Math.Max(sqRingSize, cqRingSize);
        }

        sqRing = mmap(null, (size_t)(ulong)sqRingSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, (long)IORING_OFF_SQ_RING);
        if (sqRing != MAP_FAILED)
        {
            cqRing = singleMap ? sqRing : mmap(null, (size_t)(ulong)cqRingSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, (long)IORING_OFF_CQ_RING);
            if (cqRing != MAP_FAILED)
            {
                sqes = mmap(null, (size_t)(ulong)sqesSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, (long)IORING_OFF_SQES);
            }
        }

        if (sqRing == MAP_FAILED || cqRing == MAP_FAILED || sqes == MAP_FAILED)
        {
            int error = errno;
            if (sqRing != MAP_FAILED && sqRing != null)
            {
                munmap(sqRing, (size_t)(ulong)sqRingSize);
            }

            if (!singleMap && cqRing != MAP_FAILED && cqRing != null)
            {
                munmap(cqRing, (size_t)(ulong)cqRingSize);
            }

            close(fd);
            reason = "cannot map the io_uring rings: " + Errno.Describe(error);
            return false;
        }

        ring = new IoUring(fd, p, sqRing, sqRingSize, cqRing, cqRingSize, (io_uring_sqe*)sqes, sqesSize);
        reason = null;
        return true;
    }

    /// <summary>
    /// IORING_REGISTER_FILES: later submissions name these descriptors by index with IOSQE_FIXED_FILE,
    /// which spares the kernel a file-table lookup and reference per operation. Returns 0 or a negative errno.
    /// </summary>
    public int RegisterFiles(ReadOnlySpan<int> fds)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        fixed (int* p = fds)
        {
            if (io_uring_register(_fd, IORING_REGISTER_FILES, p, (uint)fds.Length) < 0)
            {
                return -errno;
            }
        }

        _filesRegistered = true;
        return 0;
    }

    /// <summary>
    /// IORING_REGISTER_BUFFERS with one buffer: the kernel pins its pages once, and IORING_OP_READ_FIXED
    /// and WRITE_FIXED with buf_index 0 then name ranges inside it without pinning them again per
    /// operation. The memory must stay allocated until this ring is disposed (which unregisters it).
    /// Returns 0 or a negative errno.
    /// </summary>
    public int RegisterBuffer(nint address, nuint length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        iovec buffer = new() { iov_base = (void*)address, iov_len = (size_t)(ulong)length };
        if (io_uring_register(_fd, IORING_REGISTER_BUFFERS, &buffer, 1) < 0)
        {
            return -errno;
        }

        _buffersRegistered = true;
        return 0;
    }

    /// <summary>
    /// The next free submission entry, cleared, or null when the submission ring is full (the caller
    /// then calls <see cref="SubmitAndWait"/> with no wait to make room). The entry is handed to the
    /// kernel by the next <see cref="SubmitAndWait"/>.
    /// </summary>
    public io_uring_sqe* TryGetSubmission()
    {
        uint head = Volatile.Read(ref *_sqHead);
        if (_sqTailLocal - head >= SubmissionEntries)
        {
            return null;
        }

        io_uring_sqe* sqe = &_sqes[_sqTailLocal & _sqMask];
        *sqe = default;
        _sqTailLocal++;
        return sqe;
    }

    /// <summary>
    /// One io_uring_enter: submits every queued entry and, when <paramref name="waitFor"/> &gt; 0, sleeps
    /// until that many completions are available. Returns the number submitted, or a negative errno
    /// (EINTR is returned too: the caller's loop simply goes round again).
    /// </summary>
    public int SubmitAndWait(uint waitFor)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        uint toSubmit = _sqTailLocal - _sqTailPublished;
        if (toSubmit > 0)
        {
            // Release: the entries are written before the kernel can see the new tail.
            Volatile.Write(ref *_sqTail, _sqTailLocal);
            _sqTailPublished = _sqTailLocal;
            LargestSubmission = Math.Max(LargestSubmission, toSubmit);
        }

        if (toSubmit == 0 && waitFor == 0)
        {
            return 0;
        }

        EnterCalls++;
        int result = io_uring_enter(_fd, toSubmit, waitFor, waitFor > 0 ? IORING_ENTER_GETEVENTS : 0, null);
        return result < 0 ? -errno : result;
    }

    /// <summary>Whether a completion is ready (acquire: its contents are then visible).</summary>
    public bool TryPeekCompletion(out io_uring_cqe completion)
    {
        uint head = *_cqHead;
        if (head == Volatile.Read(ref *_cqTail))
        {
            completion = default;
            return false;
        }

        completion = _cqes[head & _cqMask];
        return true;
    }

    /// <summary>Gives the completion just peeked back to the kernel (release).</summary>
    public void AdvanceCompletion() => Volatile.Write(ref *_cqHead, *_cqHead + 1);

    public bool HasCompletions => *_cqHead != Volatile.Read(ref *_cqTail);

    /// <summary>
    /// Closes the ring. The owner must first have seen the completion of every operation that
    /// references memory it will free or unmap: closing cancels what is still pending, but the kernel
    /// may finish a cancelled operation's I/O after close returns.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (_filesRegistered)
        {
            io_uring_register(_fd, IORING_UNREGISTER_FILES, null, 0);
        }

        if (_buffersRegistered)
        {
            io_uring_register(_fd, IORING_UNREGISTER_BUFFERS, null, 0);
        }

        munmap(_sqes, (size_t)(ulong)_sqesSize);
        if (_cqRing != _sqRing)
        {
            munmap(_cqRing, (size_t)(ulong)_cqRingSize);
        }

        munmap(_sqRing, (size_t)(ulong)_sqRingSize);
        close(_fd);
    }
}
