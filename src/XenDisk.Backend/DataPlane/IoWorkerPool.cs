namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The threads that run one ring's blocking storage calls (the slow path, or everything with the
/// thread engine), fed through a preallocated queue of context indices (its capacity is the ring's
/// size, so enqueueing never fails or allocates). Idle threads sleep in Monitor.Wait and are woken
/// one per queued request: nothing polls or spins while the ring is idle (a SemaphoreSlim here once
/// spun with sched_yield between requests, which cost a system call per spin).
/// Threads start when work needs them, up to the limit: one more whenever a request is queued and
/// no thread is waiting for it. A ring whose requests all take io_uring's fast path (a raw file or
/// block device) then starts none or one instead of the limit, which spares a small dom0 the
/// threads' stacks and a device cycle the clone and exit of each; a ring on the thread engine, or
/// an overlay allocating under load, reaches the limit within its first burst of requests.
/// </summary>
internal sealed class IoWorkerPool
{
    private readonly object _lock = new();
    private readonly int[] _queue;
    private readonly Thread[] _threads;
    private readonly Action<int> _execute;
    private int _head;
    private int _count;
    private int _waiting;
    private int _started; // ring thread only: Enqueue and Stop
    private bool _stopping;

    public IoWorkerPool(string name, int threads, int capacity, Action<int> execute)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        _queue = new int[capacity];
        _execute = execute;
        _threads = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            _threads[i] = new Thread(Run) { IsBackground = true, Name = name };
        }
    }

    /// <summary>Queues a call; starts one more thread when none waits for it, and then returns true. Ring thread only.</summary>
    public bool Enqueue(int context)
    {
        bool grow;
        lock (_lock)
        {
            _queue[(_head + _count) % _queue.Length] = context;
            _count++;
            grow = _count > _waiting && _started < _threads.Length && !_stopping;
            Monitor.Pulse(_lock);
        }

        if (grow)
        {
            // Started outside the lock: the new thread's first act is to take it.
            _threads[_started++].Start();
        }

        return grow;
    }

    /// <summary>Lets each thread finish the call it is in, then ends them; queued work not yet started is dropped
    /// (a clean stop waits for the queue to empty first). Idempotent; ring thread only.</summary>
    public void Stop()
    {
        lock (_lock)
        {
            if (_stopping)
            {
                return;
            }

            _stopping = true;
            Monitor.PulseAll(_lock);
        }

        for (int i = 0; i < _started; i++)
        {
            _threads[i].Join();
        }
    }

    private void Run()
    {
        while (true)
        {
            int context;
            lock (_lock)
            {
                while (_count == 0 && !_stopping)
                {
                    _waiting++;
                    Monitor.Wait(_lock);
                    _waiting--;
                }

                if (_stopping)
                {
                    return;
                }

                context = _queue[_head];
                _head = (_head + 1) % _queue.Length;
                _count--;
            }

            _execute(context);
        }
    }
}
