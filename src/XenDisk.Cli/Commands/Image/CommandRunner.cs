using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// What the image and io commands share: their output goes to the invocation's writers (the console,
/// or a test's), JSON has one shape everywhere, and a failure of the work becomes one line on stderr
/// with exit code 1, never a stack trace.
/// </summary>
internal static class CommandRunner
{
    /// <summary>qemu-img's convention for an interrupted run (128 + SIGINT), so scripts can tell it from a failure.</summary>
    public const int InterruptedExitCode = 130;

    /// <summary>"-x" or "--xyz", but not "-" (stdin) or a negative size such as "-1G".</summary>
    public static bool LooksLikeOption(string token) => token.Length > 1 && token[0] == '-' && !char.IsAsciiDigit(token[1]);

    public static TextWriter Out(this ParseResult parse) => parse.InvocationConfiguration.Output;

    public static TextWriter Error(this ParseResult parse) => parse.InvocationConfiguration.Error;

    /// <summary>
    /// True for --json or --output=json (qemu-img's spelling; <see cref="ImageCommand"/> gives every
    /// command with --json the --output option too).
    /// </summary>
    public static bool WantsJson(this ParseResult parse) =>
        parse.GetValue<bool>("--json") || string.Equals(parse.GetValue<string?>("--output"), "json", StringComparison.Ordinal);

    public static void WriteJson<T>(this ParseResult parse, T value, JsonTypeInfo<T> type) => parse.Out().WriteLine(JsonSerializer.Serialize(value, type));

    /// <summary>
    /// Runs synchronous work off the invoking thread (so Ctrl+C cancels <paramref name="cancellationToken"/>
    /// while it runs) and turns the failures an operator can meet into a message and an exit code.
    /// </summary>
    public static Task<int> RunAsync(ParseResult parse, CancellationToken cancellationToken, Func<int> work) =>
        Task.Run(() =>
        {
            try
            {
                return work();
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return CommandErrors.Failed(parse, "interrupted", InterruptedExitCode);
            }
            catch (Exception e) when (e is StorageException or IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException)
            {
                return CommandErrors.Failed(parse, e.Message);
            }
        }, CancellationToken.None);
}
