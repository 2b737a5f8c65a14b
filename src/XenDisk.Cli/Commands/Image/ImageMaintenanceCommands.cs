using System.CommandLine;
using System.Globalization;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// The commands that change an image's place in its chain, in qemu-img's argument style:
/// snapshot (stack a new overlay on a frozen image), commit, hydrate and rebase. Each runs on an
/// image that no guest has open, and follows backing files only where the backing policy allows
/// (the image's directory and --allow-base).
/// </summary>
internal static class ImageMaintenanceCommands
{
    /// <summary>What an operation did, for --json.</summary>
    internal sealed record OperationReport
    {
        public required string Operation { get; init; }
        public required string Filename { get; init; }
        public required string Format { get; init; }
        public long? BytesExamined { get; init; }
        public long? BytesCopied { get; init; }
        public string? BackingFile { get; init; }
        public string? BackingFormat { get; init; }
        public string? NewImage { get; init; }
    }

    public static Command CreateSnapshot()
    {
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var image = new Argument<string>("OVERLAY") { Description = "The qcow2 image to freeze (no guest may have it open)" };
        var newImage = new Argument<string>("NEW") { Description = "The new, empty qcow2 overlay to stack on it (must not exist)" };
        var command = new Command("snapshot", "Freeze a qcow2 image and stack a new, empty overlay on it; from then on the guest's disk is NEW")
        {
            json, image, newImage,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            string top = parse.GetValue(newImage)!;
            if (!ImageFiles.TryResolveFormat(parse, path, null, out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            if (ImageFormats.Overlay(kind) is not { } overlay)
            {
                return CommandErrors.Invalid(parse, $"'{path}' is a {ImageFormats.Name(kind)} image; snapshots stack qcow2 overlays on qcow2 images");
            }
            if (overlay.Refuses(OverlayFileOperation.Snapshot, path) is { } refusal)
            {
                return CommandErrors.Invalid(parse, refusal.Error!);
            }
            if (File.Exists(top) || Directory.Exists(top))
            {
                return CommandErrors.Failed(parse, $"'{top}' already exists; xendisk does not overwrite images (remove it first)");
            }
            overlay.Snapshot(path, top);
            ImageDescription created = ImageDescription.Read(top, kind);
            Report(parse, new OperationReport
            {
                Operation = "snapshot",
                Filename = path,
                Format = overlay.Name,
                NewImage = top,
                BackingFile = created.BackingFile,
                BackingFormat = created.BackingFormat,
            }, $"Created '{top}' over '{path}' (backing_file={created.BackingFile} backing_fmt={created.BackingFormat}); '{path}' is now frozen: open it only read-only, as a backing file.");
            return 0;
        }));
        return command;
    }

    public static Command CreateCommit()
    {
        var format = ImageFiles.FormatOption();
        var keep = new Option<bool>("-d", "--keep") { Description = "Do not empty the image after committing (qemu-img commit -d)" };
        var allowBase = ImageFiles.AllowBaseOption();
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var image = new Argument<string>("IMAGE") { Description = "The overlay whose data goes down into its base" };
        var command = new Command("commit", "Write an overlay's data into its base (opened writable), then empty the overlay")
        {
            format, keep, allowBase, json, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            if (!ImageFiles.TryResolveOverlay(parse, path, parse.GetValue(format), out OverlayFormat? overlay, out int exitCode))
            {
                return exitCode;
            }
            if (overlay is null)
            {
                return CommandErrors.Invalid(parse, $"'{path}' is a raw image, which has no base to commit into");
            }
            bool empty = !parse.GetValue(keep);
            string[] allowed = parse.GetValue(allowBase) ?? [];
            ImageFiles.CheckBase(path, overlay, allowed, forCommit: true);
            using ProgressBar progress = new(parse.Error(), "committing");
            OverlayOperationResult result = overlay.Commit(path,
                new OverlayCommitOptions { EmptyOverlay = empty, Progress = p => progress.Report(p.BytesExamined, p.BytesTotal) },
                new OverlayFileOptions { BackingPolicy = ImageFiles.BackingPolicy(path, allowed) },
                cancellationToken);
            long copied = result.BytesCopied;
            progress.Complete();
            Report(parse, new OperationReport { Operation = "commit", Filename = path, Format = overlay.Name, BytesCopied = copied, BytesExamined = result.BytesExamined },
                string.Create(CultureInfo.InvariantCulture, $"Image committed ({copied} bytes written into the base{(empty ? "; the overlay is empty again" : "")})."));
            return 0;
        }));
        return command;
    }

    public static Command CreateHydrate()
    {
        var format = ImageFiles.FormatOption();
        var rate = new Option<string?>("--rate", "-r") { Description = "The most bytes per second taken from the base (e.g. 50M); unlimited when not given" };
        var allowBase = ImageFiles.AllowBaseOption();
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var image = new Argument<string>("IMAGE") { Description = "The overlay to make standalone" };
        var command = new Command("hydrate", "Copy everything an overlay still reads from its base into it, so it no longer needs the base (resumable: run again after an interruption)")
        {
            format, rate, allowBase, json, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            long bytesPerSecond = 0;
            if (parse.GetValue(rate) is string rateText && (!SizeText.TryParse(rateText, out bytesPerSecond, out _) || bytesPerSecond <= 0))
            {
                return CommandErrors.Invalid(parse, $"--rate {rateText}: give a positive number of bytes per second, e.g. 50M");
            }
            if (!ImageFiles.TryResolveOverlay(parse, path, parse.GetValue(format), out OverlayFormat? overlay, out int exitCode))
            {
                return exitCode;
            }
            if (overlay is null)
            {
                return CommandErrors.Invalid(parse, $"'{path}' is a raw image, which has no base to hydrate from");
            }
            string[] allowed = parse.GetValue(allowBase) ?? [];
            ImageFiles.CheckBase(path, overlay, allowed, forCommit: false);
            using ProgressBar progress = new(parse.Error(), "hydrating");
            OverlayOperationResult result;
            try
            {
                result = overlay.Hydrate(path,
                    new OverlayHydrateOptions { BytesPerSecond = bytesPerSecond, Progress = p => progress.Report(p.BytesExamined, p.BytesTotal) },
                    new OverlayFileOptions { BackingPolicy = ImageFiles.BackingPolicy(path, allowed) },
                    cancellationToken);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                progress.Dispose();
                return CommandErrors.Failed(parse, "hydration interrupted; what was copied is kept: run the same command again to resume", CommandRunner.InterruptedExitCode);
            }
            progress.Complete();
            Report(parse, new OperationReport
            {
                Operation = "hydrate",
                Filename = path,
                Format = overlay.Name,
                BytesCopied = result.BytesCopied,
                BytesExamined = result.BytesExamined,
            }, string.Create(CultureInfo.InvariantCulture, $"Image hydrated ({result.BytesCopied} bytes copied from the base); it no longer reads from its base."));
            return 0;
        }));
        return command;
    }

    public static Command CreateRebase()
    {
        var format = ImageFiles.FormatOption();
        var unsafeMode = new Option<bool>("-u", "--unsafe") { Description = "Only rewrite the backing file name and format (correct only if the new base has the same contents)" };
        var backing = new Option<string>("-b", "--backing") { Description = "The new base; relative to the image's directory; \"\" removes the base (which hydrates)", Required = true };
        var backingFormat = new Option<string?>("-F", "--backing-format") { Description = "The new base's format: raw or qcow2" };
        var allowBase = ImageFiles.AllowBaseOption();
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var image = new Argument<string>("IMAGE") { Description = "The qcow2 overlay to rebase" };
        var command = new Command("rebase", "Point a qcow2 overlay at a different base, copying what differs first unless -u")
        {
            format, unsafeMode, backing, backingFormat, allowBase, json, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            string newBase = parse.GetValue(backing) ?? "";
            string? newFormat = parse.GetValue(backingFormat);
            if (newBase.Length > 0 && newFormat is not ("raw" or "qcow2"))
            {
                return CommandErrors.Invalid(parse, newFormat == null
                    ? "-b needs the new base's format too (-F raw or -F qcow2): XenDisk never probes a base's format"
                    : $"unknown base format '{newFormat}' (use raw or qcow2)");
            }
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            if (ImageFormats.Overlay(kind) is not { } overlay)
            {
                return CommandErrors.Invalid(parse, $"'{path}' is a {ImageFormats.Name(kind)} image; rebase changes the backing file of qcow2 images");
            }
            if (overlay.Refuses(OverlayFileOperation.Rebase, path) is { } refusal)
            {
                return CommandErrors.Invalid(parse, refusal.Error!);
            }
            string[] allowed = parse.GetValue(allowBase) ?? [];
            if (!parse.GetValue(unsafeMode))
            {
                ImageFiles.CheckBase(path, overlay, allowed, forCommit: false);
            }
            if (newBase.Length > 0 && !parse.GetValue(unsafeMode))
            {
                string resolved = overlay.ResolveBasePath(path, newBase);
                if (!ImageFiles.BackingPolicy(path, allowed).Allows(resolved, newBase))
                {
                    return CommandErrors.Failed(parse, $"the new base '{resolved}' is outside the image's directory; allow it with --allow-base {Path.GetDirectoryName(resolved)}");
                }
            }
            using ProgressBar progress = new(parse.Error(), "rebasing");
            OverlayOperationResult result = overlay.Rebase(path,
                new OverlayRebaseOptions { NewBase = newBase.Length == 0 ? null : newBase, NewBaseFormat = newFormat, Unsafe = parse.GetValue(unsafeMode), Progress = progress.Callback },
                new OverlayFileOptions { BackingPolicy = ImageFiles.BackingPolicy(path, allowed) },
                cancellationToken);
            progress.Complete();
            ImageDescription after = ImageDescription.Read(path, kind);
            Report(parse, new OperationReport
            {
                Operation = "rebase",
                Filename = path,
                Format = overlay.Name,
                BytesCopied = result.BytesCopied,
                BytesExamined = result.BytesExamined,
                BackingFile = after.BackingFile,
                BackingFormat = after.BackingFormat,
            }, after.BackingFile == null
                ? string.Create(CultureInfo.InvariantCulture, $"'{path}' now has no base ({result.BytesCopied} bytes copied into it).")
                : string.Create(CultureInfo.InvariantCulture, $"'{path}' now reads through to '{after.BackingFile}' ({after.BackingFormat}); {result.BytesCopied} bytes copied into it."));
            return 0;
        }));
        return command;
    }

    private static void Report(ParseResult parse, OperationReport report, string text)
    {
        if (parse.WantsJson())
        {
            parse.WriteJson(report, ImageJsonContext.Default.OperationReport);
        }
        else
        {
            parse.Out().WriteLine(text);
        }
    }
}
