using System.Globalization;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// Progress of long work on stderr (stdout stays clean for --json). On a terminal, one bar redrawn in
/// place with \r; otherwise (a log, a pipe, a test) a line per tenth of the work, at most one per
/// <see cref="LineInterval"/> unless a tenth is crossed. Work that finishes within
/// <see cref="QuietPeriod"/> prints nothing at all. Thread-safe: reports may come from worker threads.
/// </summary>
internal sealed class ProgressBar : IDisposable
{
    /// <summary>Short work stays silent: a bar that flashes for 100 ms tells nothing.</summary>
    private static readonly TimeSpan QuietPeriod = TimeSpan.FromMilliseconds(500);

    /// <summary>Terminal redraws: smooth enough to look alive, rare enough to cost nothing.</summary>
    private static readonly TimeSpan RedrawInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>Lines in a log: a heartbeat even when a tenth takes long.</summary>
    private static readonly TimeSpan LineInterval = TimeSpan.FromSeconds(10);

    private const int BarWidth = 30;

    private readonly TextWriter _error;
    private readonly string _label;
    private readonly bool _terminal;
    private readonly TimeProvider _time;
    private readonly long _start;
    private readonly Lock _gate = new();
    private TimeSpan? _lastDraw;
    private int _lastTenth = -1;
    private bool _drawn;
    private readonly bool _showBytes;
    private long _done;
    private long _total;
    private bool _finished;

    /// <param name="showBytes">Also show bytes done of the total, the rate and the time left (copying work, such as convert).</param>
    /// <param name="time">The clock (tests pass their own); the system's by default.</param>
    public ProgressBar(TextWriter error, string label, bool showBytes = false, TimeProvider? time = null)
    {
        _time = time ?? TimeProvider.System;
        _start = _time.GetTimestamp();
        _error = error;
        _label = label;
        _showBytes = showBytes;
        _terminal = ReferenceEquals(error, Console.Error) && !Console.IsErrorRedirected;
    }

    /// <summary>A callback in the shape the engine's progress parameters take: (done, total).</summary>
    public Action<long, long> Callback => Report;

    public void Report(long done, long total)
    {
        lock (_gate)
        {
            if (_finished)
            {
                return;
            }
            TimeSpan now = _time.GetElapsedTime(_start);
            if (now < QuietPeriod)
            {
                return;
            }
            double fraction = total <= 0 ? 1 : Math.Clamp(done / (double)total, 0, 1);
            _done = done;
            _total = total;
            if (_terminal)
            {
                if (_lastDraw is not TimeSpan drawn || now - drawn >= RedrawInterval)
                {
                    Draw(fraction, newLine: false);
                    _lastDraw = now;
                }
                return;
            }
            int tenth = (int)(fraction * 10);
            if (tenth > _lastTenth || _lastDraw is not TimeSpan last || now - last >= LineInterval)
            {
                Draw(fraction, newLine: true);
                _lastTenth = tenth;
                _lastDraw = now;
            }
        }
    }

    /// <summary>Draws 100% (if anything was drawn before) and ends the bar's line.</summary>
    public void Complete()
    {
        lock (_gate)
        {
            if (_finished)
            {
                return;
            }
            if (_drawn)
            {
                if (!_terminal && _lastTenth >= 10)
                {
                    _finished = true;
                    return;
                }
                _done = _total;
                Draw(1, newLine: true);
            }
            _finished = true;
        }
    }

    /// <summary>Ends a terminal bar's line so that an error message starts on a line of its own.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (!_finished && _drawn && _terminal)
            {
                _error.WriteLine();
            }
            _finished = true;
        }
    }

    /// <summary>" (512 MiB of 2 GiB, 180 MiB/s, 9 s left)": the rate is the average since the start, the time left the rest at that rate.</summary>
    private string Transfer()
    {
        double seconds = Math.Max(_time.GetElapsedTime(_start).TotalSeconds, 0.001);
        long rate = (long)(_done / seconds);
        string left = rate > 0 ? $"{Math.Ceiling((_total - _done) / (double)rate).ToString(CultureInfo.InvariantCulture)} s left" : "time left unknown";
        return $" ({SizeText.Format(_done)} of {SizeText.Format(_total)}, {SizeText.Format(rate)}/s, {left})";
    }

    private void Draw(double fraction, bool newLine)
    {
        string percent = (fraction * 100).ToString("0.0", CultureInfo.InvariantCulture).PadLeft(5) + (_showBytes ? "%" + Transfer() : "");
        if (_terminal)
        {
            int filled = (int)Math.Round(fraction * BarWidth);
            string bar = new string('#', filled) + new string('-', BarWidth - filled);
            _error.Write($"\r{_label} [{bar}] {percent}{(_showBytes ? "" : "%")}");
            if (newLine)
            {
                _error.WriteLine();
            }
        }
        else
        {
            _error.WriteLine($"{_label}: {percent.Trim()}{(_showBytes ? "" : "%")}");
        }
        _error.Flush();
        _drawn = true;
    }
}
