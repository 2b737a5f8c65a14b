using XenDisk.Storage;

namespace XenDisk.Backend.ControlPlane;

// Maintenance on the open disk beside guest I/O (hydrating a copy-on-write overlay). The device owns
// that work as it owns the disk: the disk is never closed under it.
internal sealed partial class BackendDevice
{
    // Touched only while holding _serial. The source is created with the first piece of work and
    // lives until the disk closes, so work started on this disk can always be told to stop.
    private CancellationTokenSource? _maintenanceStopping;
    private readonly List<Task> _maintenance = [];

    /// <summary>
    /// Calls <paramref name="prepare"/> with the open disk while holding the device's control lock
    /// (so the disk stays open during the call); when it returns work, starts that work on a thread
    /// of its own (not the thread pool's: it may block for hours) and returns it. Returns null when
    /// the disk is not open or <paramref name="prepare"/> returned null.
    /// </summary>
    public async Task<Task?> StartMaintenanceAsync(Func<IBlockDevice, Action<CancellationToken>?> prepare, CancellationToken cancellationToken)
    {
        await _serial.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_disk is null)
            {
                return null;
            }

            Action<CancellationToken>? work = prepare(_disk);
            if (work is null)
            {
                return null;
            }

            _maintenance.RemoveAll(t => t.IsCompleted);
            _maintenanceStopping ??= new CancellationTokenSource();
            CancellationToken stopping = _maintenanceStopping.Token;
            Task running = Task.Factory.StartNew(() => work(stopping), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            _maintenance.Add(running);
            return running;
        }
        finally
        {
            _serial.Release();
        }
    }

    /// <summary>Tells the maintenance work on the disk to stop; <see cref="WaitForMaintenanceAsync"/> waits for it. Caller holds _serial.</summary>
    private void StopMaintenance() => _maintenanceStopping?.Cancel();

    /// <summary>
    /// Waits until no maintenance work runs on the disk, which must happen before the disk is
    /// flushed and closed: the engines free their buffers and locks at close. Caller holds _serial,
    /// so no new work starts meanwhile. The work reports its own outcome; its exceptions are its caller's.
    /// </summary>
    private async Task WaitForMaintenanceAsync()
    {
        if (_maintenanceStopping is null)
        {
            return;
        }

        await _maintenanceStopping.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(_maintenance).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _maintenance.Clear();
        _maintenanceStopping.Dispose();
        _maintenanceStopping = null;
    }
}
