using System.Collections.Concurrent;
using XenDisk.Storage;
using XenDisk.Xen;
using Tmds.Linux;

namespace XenDisk.Backend.Tests.Harness;

/// <summary>
/// Serves named memory disks. Each <see cref="Open"/> hands out a borrowing wrapper, so the data
/// outlives the backend's device (a reconnect or a second backend instance sees the same bytes)
/// and the test can count what the backend still holds open.
/// </summary>
public sealed class TestDiskProvider : IDiskProvider, IDisposable
{
    private readonly ConcurrentDictionary<string, MemoryBlockDevice> _disks = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, OpenGate> _gates = new(StringComparer.Ordinal);
    private int _openHandles;
    private int _opens;
    private int _flushes;

    /// <summary>Disk handles the backend opened and has not closed yet.</summary>
    public int OpenHandles => Volatile.Read(ref _openHandles);

    /// <summary>Successful opens so far.</summary>
    public int Opens => Volatile.Read(ref _opens);

    /// <summary>Flushes the backend asked of any disk so far.</summary>
    public int Flushes => Volatile.Read(ref _flushes);

    public MemoryBlockDevice Add(string target, long sizeBytes, int logicalSectorSize = 512, bool readOnly = false)
    {
        var disk = new MemoryBlockDevice(sizeBytes, logicalSectorSize, readOnly: readOnly);
        if (!_disks.TryAdd(target, disk))
        {
            disk.Dispose();
            throw new InvalidOperationException($"Disk {target} exists already.");
        }

        return disk;
    }

    public MemoryBlockDevice this[string target] => _disks[target];

    /// <summary>
    /// Makes every open of <paramref name="target"/> wait until the returned gate is opened: an image
    /// whose open is slow (a qcow2 check after a crash, a cold cache on a loaded host, a remote target).
    /// </summary>
    public OpenGate HoldOpens(string target)
    {
        var gate = new OpenGate();
        if (!_gates.TryAdd(target, gate))
        {
            throw new InvalidOperationException($"Opens of {target} are held already.");
        }

        return gate;
    }

    public IBlockDevice Open(DiskSpecification specification)
    {
        if (_gates.TryGetValue(specification.Target, out OpenGate? gate))
        {
            gate.Pass();
        }

        if (!_disks.TryGetValue(specification.Target, out MemoryBlockDevice? disk))
        {
            throw new StorageException($"{specification.Target}: no such file or directory", LibC.ENOENT);
        }

        Interlocked.Increment(ref _opens);
        Interlocked.Increment(ref _openHandles);
        return new BorrowedDisk(this, disk, specification.ReadOnly);
    }

    public void Dispose()
    {
        foreach (MemoryBlockDevice disk in _disks.Values)
        {
            disk.Dispose();
        }
    }

    /// <summary>Holds the opens of one disk until <see cref="Open"/> is called, and tells where they waited.</summary>
    public sealed class OpenGate : IDisposable
    {
        private readonly ManualResetEventSlim _open = new();
        private readonly SemaphoreSlim _entered = new(0);
        private int _onPoolThreads;

        /// <summary>Opens that waited at the gate on a thread-pool thread, holding it.</summary>
        public int WaitedOnPoolThreads => Volatile.Read(ref _onPoolThreads);

        /// <summary>Completes once an open is waiting at the gate.</summary>
        public async Task WaitForOpenAsync()
        {
            if (!await _entered.WaitAsync(BackendTestBed.Timeout))
            {
                throw new TimeoutException("No open reached the gate.");
            }
        }

        public void Open() => _open.Set();

        internal void Pass()
        {
            if (Thread.CurrentThread.IsThreadPoolThread)
            {
                Interlocked.Increment(ref _onPoolThreads);
            }

            _entered.Release();
            _open.Wait(BackendTestBed.Timeout * 2);
        }

        public void Dispose() => _open.Set();
    }

    /// <summary>What a provider returns for mode=r: the same device, refusing writes like a file opened O_RDONLY.</summary>
    private sealed class BorrowedDisk(TestDiskProvider owner, MemoryBlockDevice disk, bool readOnly) : IBlockDevice
    {
        private int _disposed;

        public BlockDeviceInfo Info => readOnly ? disk.Info with { ReadOnly = true } : disk.Info;

        public bool CompletesInline => disk.CompletesInline;

        public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => disk.Read(offset, buffers);

        public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => readOnly ? IoStatus.ReadOnly : disk.Write(offset, buffers);

        public IoStatus Flush()
        {
            Interlocked.Increment(ref owner._flushes);
            return disk.Flush();
        }

        public IoStatus Discard(long offset, long length, bool secure) => readOnly ? IoStatus.ReadOnly : disk.Discard(offset, length, secure);

        public BlockDeviceInfo Refresh()
        {
            BlockDeviceInfo info = disk.Refresh();
            return readOnly ? info with { ReadOnly = true } : info;
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                Interlocked.Decrement(ref owner._openHandles);
            }
        }
    }
}
