using System.CommandLine;
using System.CommandLine.Parsing;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
/// [-b SOURCE_FILE] [-g GRANULARITY] [-f FMT] IMAGE BITMAP`, as qemu-img bitmap: the operations run in
/// the order given on one qcow2 image's persistent dirty bitmap, and are stored when the image closes.
/// The bitmaps are QEMU's (docs/interop/qcow2.txt == Bitmaps ==), so each tool reads what the other wrote.
/// </summary>
internal static class ImageBitmapCommand
{
    private static readonly string[] Operations = ["--merge", "--add", "--remove", "--clear", "--enable", "--disable"];

    public static Command Create()
    {
        var merge = new Option<string[]>("--merge") { Description = "Mark dirty what bitmap SOURCE marks dirty (of IMAGE, or of -b SOURCE_FILE)" };
        var add = new Option<bool>("--add") { Description = "Add an empty bitmap (enabled: it tracks writes)" };
        var remove = new Option<bool>("--remove") { Description = "Remove the bitmap" };
        var clear = new Option<bool>("--clear") { Description = "Clear every bit" };
        var enable = new Option<bool>("--enable") { Description = "Track writes in the bitmap" };
        var disable = new Option<bool>("--disable") { Description = "Stop tracking writes in the bitmap" };
        var sourceFile = new Option<string?>("-b") { Description = "The image --merge reads its SOURCE bitmap from" };
        var sourceFormat = new Option<string?>("-F") { Description = "The format of -b's image (qcow2)" };
        var granularity = new Option<string?>("-g") { Description = "Granularity of an added bitmap (a power of two from 512; default: the cluster size, at least 4 KiB)" };
        var format = ImageFiles.FormatOption();
        var image = new Argument<string>("IMAGE") { Description = "The qcow2 image (no one may have it open)" };
        var name = new Argument<string>("BITMAP") { Description = "The bitmap's name" };
        var command = new Command("bitmap", "Add, remove, clear, enable, disable or merge persistent dirty bitmaps of a qcow2 image")
        {
            merge, add, remove, clear, enable, disable, sourceFile, sourceFormat, granularity, format, image, name,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            string bitmap = parse.GetValue(name)!;
            List<(string Operation, string? Source)> steps = StepsInOrder(parse.Tokens);
            if (steps.Count == 0)
            {
                return CommandErrors.Invalid(parse, "need at least one of --merge, --add, --remove, --clear, --enable, --disable");
            }
            long size = 0;
            if (parse.GetValue(granularity) is { } text)
            {
                if (!steps.Any(s => s.Operation == "--add"))
                {
                    return CommandErrors.Invalid(parse, "-g is only valid with --add");
                }
                if (!SizeText.TryParse(text, out size, out string error))
                {
                    return CommandErrors.Invalid(parse, $"invalid granularity '{text}': {error}");
                }
            }
            string? otherFile = parse.GetValue(sourceFile);
            if (otherFile != null && !steps.Any(s => s.Operation == "--merge"))
            {
                return CommandErrors.Invalid(parse, "-b is only valid with --merge");
            }
            if (parse.GetValue(sourceFormat) is { } otherFormat && otherFormat != "qcow2")
            {
                return CommandErrors.Invalid(parse, $"-F {otherFormat}: only qcow2 images hold persistent bitmaps");
            }
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            if (kind != ImageFormat.Qcow2)
            {
                return CommandErrors.Failed(parse, $"'{path}' is not a qcow2 image; only qcow2 images hold persistent bitmaps");
            }
            using Qcow2Image qcow2 = Qcow2Disk.Open(Path.GetFullPath(path), new Qcow2OpenOptions { BackingPolicy = ImageFiles.BackingPolicy(path, null) });
            foreach ((string operation, string? source) in steps)
            {
                IoStatus status = operation switch
                {
                    "--add" => qcow2.AddBitmap(bitmap, size > 0 ? size : qcow2.DefaultBitmapGranularity),
                    "--remove" => qcow2.RemoveBitmap(bitmap),
                    "--clear" => qcow2.ClearBitmap(bitmap),
                    "--enable" => qcow2.SetBitmapEnabled(bitmap, true),
                    "--disable" => qcow2.SetBitmapEnabled(bitmap, false),
                    _ => qcow2.MergeIntoBitmap(bitmap, DirtyRangesOf(qcow2, otherFile, source!)),
                };
                if (status != IoStatus.Ok)
                {
                    return CommandErrors.Failed(parse, $"{operation} '{bitmap}' on '{path}' failed: {qcow2.LastError ?? status.Describe()}");
                }
            }
            IoStatus closed = qcow2.Close();
            if (closed != IoStatus.Ok)
            {
                return CommandErrors.Failed(parse, $"storing the bitmaps of '{path}' failed: {qcow2.LastError ?? closed.Describe()}");
            }
            return 0;
        }));
        return command;
    }

    /// <summary>The operations in command-line order (qemu-img applies them in that order), each --merge with its SOURCE.</summary>
    private static List<(string, string?)> StepsInOrder(IReadOnlyList<Token> tokens)
    {
        List<(string, string?)> steps = [];
        for (int i = 0; i < tokens.Count; i++)
        {
            if (tokens[i].Type == TokenType.Option && Operations.Contains(tokens[i].Value))
            {
                string? source = tokens[i].Value == "--merge" && i + 1 < tokens.Count ? tokens[i + 1].Value : null;
                steps.Add((tokens[i].Value, source));
            }
        }
        return steps;
    }

    private static IReadOnlyList<(long, long)> DirtyRangesOf(Qcow2Image target, string? sourceFile, string source)
    {
        if (sourceFile == null)
        {
            PersistentBitmap bitmap = target.Bitmaps.FirstOrDefault(b => b.Name == source)
                ?? throw new StorageException($"the image has no bitmap '{source}'");
            return Consistent(bitmap, source).DirtyRanges(target.Info.SizeBytes);
        }
        using FileImageDevice device = FileImageDevice.Open(Path.GetFullPath(sourceFile), readOnly: true);
        Qcow2Header header = Qcow2Disk.ReadHeader(device);
        PersistentBitmap other = Qcow2Image.ReadBitmaps(device, header).FirstOrDefault(b => b.Name == source)
            ?? throw new StorageException($"'{sourceFile}' has no bitmap '{source}'");
        return Consistent(other, source).DirtyRanges(header.VirtualSize);
    }

    private static PersistentBitmap Consistent(PersistentBitmap bitmap, string name) => bitmap.Inconsistent
        ? throw new StorageException($"bitmap '{name}' is inconsistent (its in_use flag was set when the image was opened) and cannot be merged")
        : bitmap;
}
