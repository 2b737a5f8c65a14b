using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using XenDisk.Cli.Commands.Image;
using XenDisk.Cow;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands;

/// <summary>
/// `xendisk io IMAGE -c CMD ...`, in the spirit of qemu-io: reads, writes, discards and flushes on an
/// image through the devices the backend gives a guest (the copy-on-write disk provider). Commands:
/// <c>read [-P pattern] OFFSET LENGTH</c> (with -P every byte is verified), <c>write [-P pattern | -z]
/// OFFSET LENGTH</c> (default pattern 0xcd, as qemu-io), <c>discard OFFSET LENGTH</c>, <c>flush</c>,
/// <c>sleep MILLISECONDS</c> (as qemu-io's: the image stays open, for example to be killed while it is).
/// One line per command; exit code 0 only if every command succeeded, 2 when a command cannot be parsed
/// (nothing is then run), 1 otherwise.
/// </summary>
internal static class IoCommand
{
    /// <summary>qemu-io's default write pattern.</summary>
    private const byte DefaultWritePattern = 0xcd;

    /// <summary>Requests larger than this are issued in pieces of this size (what one blkif request with indirect segments carries, times four).</summary>
    private const int ChunkBytes = 4 * 1024 * 1024;

    internal enum IoOperation
    {
        Read,
        Write,
        Discard,
        Flush,
        Sleep,
    }

    /// <summary>One parsed -c command.</summary>
    /// <param name="Pause">How long a sleep command waits; zero for the others.</param>
    internal sealed record IoRequest(IoOperation Operation, long Offset, long Length, byte? Pattern, bool Zeros, string Text, TimeSpan Pause = default);

    public static Command Create()
    {
        var commands = new Option<string[]>("-c", "--cmd")
        {
            Description = "A command (repeatable, run in order): 'read [-P 0xab] OFFSET LENGTH', 'write [-P 0xab | -z] OFFSET LENGTH', 'discard OFFSET LENGTH', 'flush', 'sleep MILLISECONDS'",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var format = ImageFiles.FormatOption();
        var allowBase = ImageFiles.AllowBaseOption();
        var readOnly = new Option<bool>("-r", "--read-only") { Description = "Open the image read-only (the default when every command is a read)" };
        var policy = new Option<string?>("--policy") { Description = "An overlay's metadata policy, as the disk target's policy= option: sync, flush (the default), lazy or transient" };
        policy.AcceptOnlyFromAmong("sync", "flush", "lazy", "transient");
        var image = new Argument<string>("IMAGE") { Description = "The image file" };
        var command = new Command("io", "Run reads, writes, discards and flushes on an image through the backend's copy-on-write engine (qemu-io style)")
        {
            commands, format, allowBase, readOnly, policy, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            string[] texts = parse.GetValue(commands) ?? [];
            if (texts.Length == 0)
            {
                return CommandErrors.Invalid(parse, "no command given: use -c 'read|write|discard|flush ...'");
            }
            List<IoRequest> requests = [];
            foreach (string text in texts)
            {
                if (!TryParseRequest(text, out IoRequest? request, out string error))
                {
                    return CommandErrors.Invalid(parse, $"-c '{text}': {error}");
                }
                requests.Add(request!);
            }
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            bool openReadOnly = parse.GetValue(readOnly) || requests.All(r => r.Operation is IoOperation.Read or IoOperation.Sleep);
            // The engine logs what a status cannot say (an image found corrupt) on stderr.
            using ILoggerFactory logs = CommandLogging.Create(verbose: false);
            IBlockDevice device = ImageFiles.OpenForIo(path, kind, parse.GetValue(allowBase), openReadOnly, logs.CreateLogger("xendisk"), parse.GetValue(policy));
            bool allSucceeded = true;
            try
            {
                using IoBuffers buffers = new();
                foreach (IoRequest request in requests)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    if (request.Operation == IoOperation.Sleep)
                    {
                        cancellationToken.WaitHandle.WaitOne(request.Pause);
                        continue;
                    }
                    if (Execute(device, request, buffers, out string outcome))
                    {
                        parse.Out().WriteLine(outcome);
                    }
                    else
                    {
                        CommandErrors.Failed(parse, outcome);
                        allSucceeded = false;
                    }
                }
            }
            finally
            {
                // An overlay says whether its metadata reached the disk; Dispose could not.
                IoStatus closed = device is IOverlayImage overlay ? overlay.Close() : IoStatus.Ok;
                string why = Reason(device, closed);
                device.Dispose();
                if (closed != IoStatus.Ok)
                {
                    CommandErrors.Failed(parse, $"closing '{path}' failed ({why}): its metadata may not be on disk");
                    allSucceeded = false;
                }
            }
            return allSucceeded ? 0 : CommandErrors.FailureExitCode;
        }));
        return command;
    }

    /// <summary>Parses one qemu-io style command. Offsets and lengths take k/M/G suffixes; patterns are 0..255 (decimal or 0x hex).</summary>
    internal static bool TryParseRequest(string text, out IoRequest? request, out string error)
    {
        request = null;
        error = "";
        string[] words = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        if (words.Length == 0)
        {
            error = "an empty command";
            return false;
        }
        IoOperation operation;
        switch (words[0])
        {
            case "read": operation = IoOperation.Read; break;
            case "write": operation = IoOperation.Write; break;
            case "discard": operation = IoOperation.Discard; break;
            case "flush": operation = IoOperation.Flush; break;
            case "sleep": operation = IoOperation.Sleep; break;
            default:
                error = $"unknown command '{words[0]}' (read, write, discard, flush or sleep)";
                return false;
        }
        if (operation == IoOperation.Sleep)
        {
            if (words.Length != 2 || !int.TryParse(words[1], NumberStyles.None, CultureInfo.InvariantCulture, out int milliseconds))
            {
                error = "sleep takes a number of milliseconds";
                return false;
            }
            request = new IoRequest(IoOperation.Sleep, 0, 0, null, false, text, TimeSpan.FromMilliseconds(milliseconds));
            return true;
        }
        if (operation == IoOperation.Flush)
        {
            if (words.Length != 1)
            {
                error = "flush takes no arguments";
                return false;
            }
            request = new IoRequest(IoOperation.Flush, 0, 0, null, false, text);
            return true;
        }
        byte? pattern = null;
        bool zeros = false;
        List<string> positional = [];
        for (int i = 1; i < words.Length; i++)
        {
            switch (words[i])
            {
                case "-P" when operation is IoOperation.Read or IoOperation.Write:
                    if (i + 1 >= words.Length || !TryParsePattern(words[i + 1], out byte value))
                    {
                        error = "-P needs a byte pattern, 0 to 255 (e.g. 0xab)";
                        return false;
                    }
                    pattern = value;
                    i++;
                    break;
                case "-z" when operation == IoOperation.Write:
                    zeros = true;
                    break;
                default:
                    if (words[i].StartsWith('-') && words[i].Length > 1 && !char.IsAsciiDigit(words[i][1]))
                    {
                        error = $"unknown flag '{words[i]}' for {words[0]}";
                        return false;
                    }
                    positional.Add(words[i]);
                    break;
            }
        }
        if (zeros && pattern != null)
        {
            error = "-z and -P cannot be combined";
            return false;
        }
        if (positional.Count != 2)
        {
            error = $"{words[0]} needs an OFFSET and a LENGTH";
            return false;
        }
        if (!SizeText.TryParse(positional[0], out long offset, out string offsetError))
        {
            error = $"invalid offset: {offsetError}";
            return false;
        }
        if (!SizeText.TryParse(positional[1], out long length, out string lengthError))
        {
            error = $"invalid length: {lengthError}";
            return false;
        }
        request = new IoRequest(operation, offset, length, pattern ?? (operation == IoOperation.Write && !zeros ? DefaultWritePattern : null), zeros, text);
        return true;
    }

    private static bool TryParsePattern(string text, out byte value)
    {
        if (text.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            return byte.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
        }
        return byte.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out value);
    }

    /// <summary>Runs one request. The outcome is the line to print: qemu-io's on success, the reason on failure.</summary>
    private static bool Execute(IBlockDevice device, IoRequest request, IoBuffers buffers, out string outcome)
    {
        string verb = request.Operation switch
        {
            IoOperation.Read => "read",
            IoOperation.Write => "wrote",
            IoOperation.Discard => "discard",
            _ => "flush",
        };
        if (request.Operation == IoOperation.Flush)
        {
            IoStatus flushed = device.Flush();
            outcome = flushed == IoStatus.Ok ? "flush completed" : $"flush failed ({Reason(device, flushed)})";
            return flushed == IoStatus.Ok;
        }

        BlockDeviceInfo info = device.Info;
        long size = info.SizeBytes;
        if (request.Offset > size || request.Length > size - request.Offset)
        {
            outcome = Invariant($"{request.Text}: the range {request.Offset}+{request.Length} lies beyond the end of the disk ({size} bytes)");
            return false;
        }
        int sector = info.LogicalSectorSize;
        if (request.Offset % sector != 0 || request.Length % sector != 0)
        {
            outcome = Invariant($"{request.Text}: offset and length must be multiples of the disk's {sector}-byte sectors");
            return false;
        }
        if (request.Operation == IoOperation.Discard)
        {
            IoStatus discarded = device.Discard(request.Offset, request.Length, secure: false);
            outcome = discarded switch
            {
                IoStatus.Ok => Invariant($"discard {request.Length}/{request.Length} bytes at offset {request.Offset}"),
                IoStatus.NotSupported => $"{request.Text}: the disk does not support discard ({info.Description})",
                _ => Invariant($"{request.Text}: discard failed ({Reason(device, discarded)})"),
            };
            return discarded == IoStatus.Ok;
        }

        if (request.Zeros && info.SupportsDiscard && info.DiscardZeroes)
        {
            // Like qemu-io's write -z, ask for zeros rather than write them where a discarded range is
            // promised to read as zeros (qcow2 zero clusters, discarded grains, punched holes): no data is stored.
            IoStatus zeroed = device.Discard(request.Offset, request.Length, secure: false);
            if (zeroed != IoStatus.NotSupported)
            {
                outcome = zeroed == IoStatus.Ok
                    ? Invariant($"{verb} {request.Length}/{request.Length} bytes at offset {request.Offset}")
                    : Invariant($"{request.Text}: write failed ({Reason(device, zeroed)})");
                return zeroed == IoStatus.Ok;
            }
        }

        long done = 0;
        while (done < request.Length)
        {
            int length = (int)Math.Min(ChunkBytes, request.Length - done);
            long at = request.Offset + done;
            Span<byte> chunk = buffers.Span[..length];
            IoStatus status;
            if (request.Operation == IoOperation.Write)
            {
                chunk.Fill(request.Zeros ? (byte)0 : request.Pattern!.Value);
                status = device.Write(at, [buffers.Slice(length)]);
            }
            else
            {
                status = device.Read(at, [buffers.Slice(length)]);
                if (status == IoStatus.Ok && request.Pattern is byte expected)
                {
                    int mismatch = chunk.IndexOfAnyExcept(expected);
                    if (mismatch >= 0)
                    {
                        outcome = Invariant($"{request.Text}: pattern verification failed at offset {at + mismatch}: expected 0x{expected:x2}, found 0x{chunk[mismatch]:x2}");
                        return false;
                    }
                }
            }
            if (status != IoStatus.Ok)
            {
                outcome = Invariant($"{request.Text}: {(request.Operation == IoOperation.Write ? "write" : "read")} failed at offset {at} ({Reason(device, status)})");
                return false;
            }
            done += length;
        }
        outcome = Invariant($"{verb} {request.Length}/{request.Length} bytes at offset {request.Offset}");
        return true;
    }

    /// <summary>The status, with the engine's explanation when it has one (an I/O error says nothing about why).</summary>
    private static string Reason(IBlockDevice device, IoStatus status) =>
        status == IoStatus.IoError && (device as ICopyOnWriteImage)?.LastError is { } reason ? $"{status.Describe()}: {reason}" : status.Describe();

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    /// <summary>One page-aligned transfer buffer (direct I/O takes it without bouncing). Owned by the io command run.</summary>
    private sealed unsafe class IoBuffers : IDisposable
    {
        private readonly byte* _memory = (byte*)NativeMemory.AlignedAlloc(ChunkBytes, AlignedBufferPool.PageSize);

        public Span<byte> Span => new(_memory, ChunkBytes);

        public IoBuffer Slice(int length) => new((nint)_memory, length);

        public void Dispose() => NativeMemory.AlignedFree(_memory);
    }
}
