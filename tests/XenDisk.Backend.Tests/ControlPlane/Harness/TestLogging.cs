using Xunit.Abstractions;
using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace XenDisk.Backend.Tests.Harness;

/// <summary>Records every log entry (for assertions) and echoes it to the test's output (for diagnosis).</summary>
public sealed class TestLoggerFactory(ITestOutputHelper? output) : ILoggerFactory
{
    private readonly ConcurrentQueue<LogEntry> _entries = new();

    public IReadOnlyCollection<LogEntry> Entries => _entries;

    public IEnumerable<LogEntry> WithEventId(int id) => _entries.Where(e => e.EventId == id);

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

    public void Dispose()
    {
    }

    private void Add(LogEntry entry)
    {
        _entries.Enqueue(entry);
        try
        {
            output?.WriteLine($"{entry.Level} [{entry.EventId}] {entry.Category}: {entry.Message}{(entry.Exception is null ? "" : " | " + entry.Exception)}");
        }
        catch (InvalidOperationException)
        {
            // The test already finished; a background thread logged late.
        }
    }

    private sealed class Logger(TestLoggerFactory owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Add(new LogEntry(logLevel, eventId.Id, category[(category.LastIndexOf('.') + 1)..], formatter(state, exception), exception));
    }
}

public sealed record LogEntry(LogLevel Level, int EventId, string Category, string Message, Exception? Exception);
