using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Tmds.Linux;
using static Tmds.Linux.LibC;
using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>
/// The image locks QEMU takes (block/file-posix.c, raw_apply_lock_bytes and raw_check_lock_bytes),
/// taken the same way so that a QEMU process, qemu-img or qemu-io and XenDisk keep off each other's
/// images: open-file-description read locks on one byte per permission, byte 100 + bit for each
/// permission held and byte 200 + bit for each permission not shared with others. A conflict is a
/// byte someone else has locked among the 200 + bit bytes of what we need, or the 100 + bit bytes of
/// what we refuse to share, found with F_OFD_GETLK as QEMU's qemu_lock_fd_test does.
/// <para>
/// The locks belong to the open file description of the image's own descriptor, so they last exactly
/// as long as the device that holds it: closing the device releases them, and nothing needs undoing.
/// As QEMU does, the bytes are locked first and checked second, so two openers racing both see each
/// other (and at worst both give up) rather than both proceeding.
/// </para>
/// </summary>
public static unsafe class ImageLocks
{
    /// <summary>RAW_LOCK_PERM_BASE: the byte for permission bit i held is 100 + i (libvirt takes byte 0).</summary>
    private const long PermissionBase = 100;

    /// <summary>RAW_LOCK_SHARED_BASE: the byte for permission bit i not shared with others is 200 + i.</summary>
    private const long UnsharedBase = 200;

    /// <summary>
    /// How often a conflict whose holder /proc cannot name is tested again before it is reported. A
    /// process forked by a thread of ours (or of any process that had the image open) holds a copy of
    /// the descriptor, and with it the open file description and its locks, until it execs; by the
    /// time /proc has been searched such a holder is usually gone. A holder /proc names is reported at once.
    /// </summary>
    private const int UnidentifiedRetests = 3;

    /// <summary>
    /// How long a conflict held by a child of ours that has not exec'd yet is waited out (see
    /// <see cref="IsOwnChildBeforeExec"/>): a fork by another thread (Process.Start) copies every
    /// descriptor until the exec that follows within milliseconds; a child stuck longer is reported.
    /// </summary>
    private static readonly TimeSpan OwnForkWait = TimeSpan.FromSeconds(2);


    /// <summary>BLK_PERM_* (include/block/block-common.h), in bit order, with the names QEMU's messages use.</summary>
    [Flags]
    private enum Permissions
    {
        ConsistentRead = 0x01,
        Write = 0x02,
        WriteUnchanged = 0x04,
        Resize = 0x08,
    }

    private static readonly string[] PermissionNames = ["consistent read", "write", "write unchanged", "resize"];

    /// <summary>
    /// What an image opener holds and refuses to share, as a QEMU format driver over a file does
    /// (qemu-io on a writable qcow2 locks bytes 100, 101, 103, 201 and 203): a reader needs consistent
    /// reads; a writer also writes and resizes; neither lets anyone else write or resize the image
    /// under its metadata. Two readers therefore share an image; a reader and a writer do not.
    /// </summary>
    private static (Permissions Held, Permissions Unshared) For(bool writable) => writable
        ? (Permissions.ConsistentRead | Permissions.Write | Permissions.Resize, Permissions.Write | Permissions.Resize)
        : (Permissions.ConsistentRead, Permissions.Write | Permissions.Resize);

    /// <summary>
    /// Opens a raw file or block device as <see cref="RawBlockDevice.Open"/> does and locks it.
    /// Throws <see cref="StorageException"/> naming the path (and the holder, when it is locked).
    /// </summary>
    public static RawBlockDevice OpenRaw(string path, bool readOnly, RawDeviceOptions? options = null)
    {
        RawBlockDevice device = RawBlockDevice.Open(path, readOnly, options);
        try
        {
            Acquire(device, path, writable: !readOnly);
            return device;
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Who holds <paramref name="path"/> so that an opener for reading (or, with <paramref name="writable"/>,
    /// for writing) would be refused: the refusal an open would meet, naming the holder, or null when
    /// nothing conflicts. Takes the locks on a descriptor of its own for as long as it looks, as an
    /// opener would, and releases them by closing it.
    /// </summary>
    public static string? Holder(string path, bool writable)
    {
        using SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        try
        {
            Acquire(handle, path, writable);
            return null;
        }
        catch (StorageException e) when (e.Errno == EAGAIN)
        {
            return e.Message;
        }
    }

    /// <summary>
    /// Locks the file under <paramref name="device"/> (a <see cref="FileImageDevice"/> or a device over
    /// one file descriptor); devices without one (memory, composites) are left alone. The caller disposes
    /// the device when this throws.
    /// </summary>
    public static void Acquire(IBlockDevice device, string path, bool writable)
    {
        SafeFileHandle? handle = device switch
        {
            FileImageDevice file => file.Handle,
            IRemappableBlockDevice remappable when remappable.Files.Count == 1 => remappable.Files[0],
            _ => null,
        };
        if (handle != null)
        {
            Acquire(handle, path, writable);
        }
    }

    /// <summary>
    /// Locks <paramref name="handle"/>'s file for a reader or a writer. Throws <see cref="StorageException"/>
    /// (EAGAIN) naming the permission and the holder when another open file description conflicts.
    /// A file system without OFD locks leaves the image unlocked, as QEMU's locking=auto does.
    /// </summary>
    public static void Acquire(SafeFileHandle handle, string path, bool writable)
    {
        (Permissions held, Permissions unshared) = For(writable);
        bool added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            int fd = (int)handle.DangerousGetHandle();
            for (int bit = 0; bit < PermissionNames.Length; bit++)
            {
                Permissions permission = (Permissions)(1 << bit);
                if ((held.HasFlag(permission) && !TryLock(fd, PermissionBase + bit, path, permission, shared: false))
                    || (unshared.HasFlag(permission) && !TryLock(fd, UnsharedBase + bit, path, permission, shared: true)))
                {
                    return;
                }
            }
            // raw_check_lock_bytes: someone who does not share what we hold, then someone who holds what we do not share.
            long forkDeadline = Environment.TickCount64 + (long)OwnForkWait.TotalMilliseconds;
            for (int attempt = 0; ; attempt++)
            {
                (long offset, string failure, string what)? conflict = FindConflict(fd, held, unshared, out int posixOwner);
                if (conflict is not { } found)
                {
                    return;
                }
                int? holder = posixOwner > 0 ? posixOwner : FindHolder(fd, path, found.offset);
                if (holder == null && attempt < UnidentifiedRetests)
                {
                    continue;
                }
                if (holder is int child && IsOwnChildBeforeExec(child) && Environment.TickCount64 < forkDeadline)
                {
                    // Our own fork, about to exec (it closes the copy then): wait for that, briefly.
                    Thread.Sleep(1);
                    continue;
                }
                throw new StorageException($"{found.failure} on '{path}': {Describe(holder)} has the image open and {found.what} (is a QEMU process or another XenDisk using it?)", EAGAIN);
            }
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>Takes the read lock on one byte; false when the file system has no OFD locks (then nothing is locked).</summary>
    private static bool TryLock(int fd, long offset, string path, Permissions permission, bool shared)
    {
        flock request = new() { l_type = (short)F_RDLCK, l_whence = (short)SEEK_SET, l_start = offset, l_len = 1 };
        if (fcntl(fd, F_OFD_SETLK, &request) == 0)
        {
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        if (errno == EINVAL || errno == ENOLCK || errno == EOPNOTSUPP)
        {
            return false;
        }
        // Nobody takes write locks on these bytes, so this is a foreign locker or a failing file system.
        string name = PermissionNames[(int)Math.Log2((int)permission)];
        throw new StorageException(errno == EAGAIN || errno == EACCES
            ? $"Failed to lock byte {offset} of '{path}' ({(shared ? "unshared " : "")}\"{name}\"): {Describe(FindHolder(fd, path, offset))} holds a conflicting lock."
            : $"Failed to lock byte {offset} of '{path}': {XenDisk.Libc.Errno.Describe(errno)}", errno);
    }

    /// <summary>The first lock byte another open file description holds against us, with QEMU's wording for it.</summary>
    private static (long Offset, string Failure, string What)? FindConflict(int fd, Permissions held, Permissions unshared, out int posixOwner)
    {
        for (int bit = 0; bit < PermissionNames.Length; bit++)
        {
            if (held.HasFlag((Permissions)(1 << bit)) && IsLocked(fd, UnsharedBase + bit, out posixOwner))
            {
                return (UnsharedBase + bit, $"Failed to get \"{PermissionNames[bit]}\" lock", $"does not share \"{PermissionNames[bit]}\"");
            }
        }
        for (int bit = 0; bit < PermissionNames.Length; bit++)
        {
            if (unshared.HasFlag((Permissions)(1 << bit)) && IsLocked(fd, PermissionBase + bit, out posixOwner))
            {
                return (PermissionBase + bit, $"Failed to get shared \"{PermissionNames[bit]}\" lock", $"holds \"{PermissionNames[bit]}\"");
            }
        }
        posixOwner = 0;
        return null;
    }

    /// <summary>qemu_lock_fd_test: would a write lock on the byte conflict with another open file description's lock?</summary>
    private static bool IsLocked(int fd, long offset, out int posixOwner)
    {
        flock test = new() { l_type = (short)F_WRLCK, l_whence = (short)SEEK_SET, l_start = offset, l_len = 1 };
        if (fcntl(fd, F_OFD_GETLK, &test) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new StorageException($"Cannot test the lock byte {offset}: {XenDisk.Libc.Errno.Describe(errno)}", errno);
        }
        // A POSIX lock reports its owner; an OFD lock (QEMU's, ours) reports -1, to be looked for in /proc.
        posixOwner = test.l_pid;
        return test.l_type != F_UNLCK;
    }

    /// <summary>
    /// Finds the process whose open file description of <paramref name="path"/> holds a lock covering
    /// <paramref name="offset"/>: /proc/PID/fdinfo/FD lists the locks of that description ("lock:" lines
    /// in the /proc/locks format). Null when /proc cannot tell (no permission, or the holder is gone).
    /// </summary>
    private static int? FindHolder(int ownFd, string path, long offset)
    {
        string target;
        try
        {
            target = Path.GetFullPath(new FileInfo(path).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            target = Path.GetFullPath(path);
        }
        int self = Environment.ProcessId;
        try
        {
            foreach (string process in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(process), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                {
                    continue;
                }
                try
                {
                    foreach (string fdPath in Directory.EnumerateFileSystemEntries(Path.Combine(process, "fd")))
                    {
                        string fd = Path.GetFileName(fdPath);
                        if ((pid == self && fd == ownFd.ToString(CultureInfo.InvariantCulture))
                            || new FileInfo(fdPath).LinkTarget != target
                            || !LocksCover(File.ReadAllLines(Path.Combine(process, "fdinfo", fd)), offset))
                        {
                            continue;
                        }
                        return pid;
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // The process exited, or its descriptors are not ours to see.
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    /// <summary>True when a "lock:" line ("lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:1234 100 101") covers the byte.</summary>
    private static bool LocksCover(string[] fdinfo, long offset)
    {
        foreach (string line in fdinfo)
        {
            if (!line.StartsWith("lock:", StringComparison.Ordinal))
            {
                continue;
            }
            string[] fields = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length >= 2
                && long.TryParse(fields[^2], NumberStyles.None, CultureInfo.InvariantCulture, out long start)
                && start <= offset
                && (fields[^1] == "EOF" || (long.TryParse(fields[^1], NumberStyles.None, CultureInfo.InvariantCulture, out long end) && offset <= end)))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// True for a child of this process that has not exec'd yet: it runs our executable still, and
    /// holds copies of our descriptors (and so our locks) until exec closes them (O_CLOEXEC).
    /// </summary>
    private static bool IsOwnChildBeforeExec(int pid)
    {
        try
        {
            string self = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
            bool ours = File.ReadLines($"/proc/{pid}/status").Any(line => line.StartsWith("PPid:", StringComparison.Ordinal) && line[5..].Trim() == self);
            return ours && new FileInfo($"/proc/{pid}/exe").LinkTarget == new FileInfo("/proc/self/exe").LinkTarget;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static string Describe(int? holder)
    {
        if (holder is not int pid)
        {
            return "another process";
        }
        if (pid == Environment.ProcessId)
        {
            return $"this process (pid {pid}, another open of the image)";
        }
        try
        {
            return $"process {pid} ({File.ReadAllText($"/proc/{pid}/comm").Trim()})";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return $"process {pid}";
        }
    }
}
