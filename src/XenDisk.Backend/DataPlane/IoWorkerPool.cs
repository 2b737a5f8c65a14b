namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The threads that run one ring's blocking storage calls (the slow path, or everything with the
/// thread engine), fed through a preallocated queue of context indices (its capacity is the ring's
/// size, so enqueueing never fails or allocates). Idle threads sleep in Monitor.Wait and are woken
/// one per queued request: nothing polls or spins while the ring is idle (a SemaphoreSlim here once
/// spun with sched_yield between requests, which cost a system call per spin).
/// </summary>
internal sealed class IoWorkerPool
{
    private readonly object _lock = new();
    private readonly int[] _queue;
    private readonly Thread[] _threads;
    private readonly Action<int> _execute;
    private int _head;
    private int _count;
    private bool _stopping;

    public IoWorkerPool(string name, int threads, int capacity, Action<int> execute)
    {
        _queue = new int[capacity];
        _execute = execute;
        _threads = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            _threads[i] = new Thread(Run) { IsBackground = true, Name = name };
        }
    }

    public void Start()
    {
        foreach (Thread thread in _threads)
        {
            thread.Start();
        }
    }

    public void Enqueue(int context)
    {
        lock (_lock)
        {
            _queue[(_head + _count) % _queue.Length] = context;
            _count++;
            Monitor.Pulse(_lock);
        }
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

        foreach (Thread thread in _threads)
        {
            if (thread.ThreadState != ThreadState.Unstarted)
            {
                thread.Join();
            }
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
                    Monitor.Wait(_lock);
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
