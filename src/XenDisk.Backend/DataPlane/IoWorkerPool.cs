namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The threads that run one ring's blocking storage calls, fed through a preallocated queue of
/// context indices (its capacity is the ring's size, so enqueueing never fails or allocates). The
/// number of threads is the ring's storage queue depth.
/// </summary>
internal sealed class IoWorkerPool
{
    private readonly Lock _lock = new();
    private readonly int[] _queue;
    private readonly SemaphoreSlim _work = new(0);
    private readonly Thread[] _threads;
    private readonly Action<int> _execute;
    private int _head;
    private int _count;
    private volatile bool _stopping;

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
        }

        _work.Release();
    }

    /// <summary>Lets each thread finish the call it is in, then ends them; queued work not yet started is dropped
    /// (a clean stop waits for the queue to empty first). Idempotent; ring thread only.</summary>
    public void Stop()
    {
        if (_stopping)
        {
            return;
        }

        _stopping = true;
        _work.Release(_threads.Length);
        foreach (Thread thread in _threads)
        {
            if (thread.ThreadState != ThreadState.Unstarted)
            {
                thread.Join();
            }
        }

        _work.Dispose();
    }

    private void Run()
    {
        while (true)
        {
            _work.Wait();
            if (_stopping)
            {
                return;
            }

            int context;
            lock (_lock)
            {
                if (_count == 0)
                {
                    continue;
                }

                context = _queue[_head];
                _head = (_head + 1) % _queue.Length;
                _count--;
            }

            _execute(context);
        }
    }
}
