using System.CommandLine;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image convert [-f FMT] [-O raw|qcow2] [-p] [-c] [-o compression_type=zlib|zstd] SOURCE TARGET`, as qemu-img convert:
/// the source's virtual disk (its backing chain included) becomes a standalone image. Blocks that
/// read as zeros are not written (qemu-img's default sparse detection, -S 4k), so a raw target keeps
/// holes and a qcow2 target allocates only clusters holding data; with -c those clusters are
/// compressed (deflate, or zstd with -o compression_type=zstd). Runs on the engine the backend serves
/// guests with, and takes the same image locks. An iSCSI LUN may be the source (raw or a bitmap
/// overlay) or a raw target: a LUN is not created but written in place, so it must be at least the
/// source's size, and its zero blocks are written too (a LUN holds whatever it held before).
/// </summary>
internal static class ImageConvertCommand
{
    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var outputFormat = new Option<string>("-O", "--output-format") { Description = "The target's format: raw or qcow2 (default raw, as qemu-img)", DefaultValueFactory = _ => "raw" };
        var progress = new Option<bool>("-p", "--progress") { Description = "Show progress on stderr: bytes, rate and time left" };
        var compress = new Option<bool>("-c", "--compress") { Description = "Compressed qcow2 output (deflate by default)" };
        var createOptions = new Option<string[]>("-o") { Description = "Target options: compression_type=zlib|zstd (qcow2)" };
        var allowBase = ImageFiles.AllowBaseOption();
        var source = new Argument<string>("SOURCE") { Description = "The image to read" };
        var target = new Argument<string>("TARGET") { Description = "The image to write (replaced if it exists and no one holds it)" };
        var command = new Command("convert", "Copy an image's virtual disk, backing chain included, into a new raw or qcow2 image, skipping zeros")
        {
            format, outputFormat, progress, compress, createOptions, allowBase, source, target,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string sourcePath = parse.GetValue(source)!;
            string targetPath = parse.GetValue(target)!;
            if (!ImageFormats.TryParse(parse.GetValue(outputFormat), out ImageFormat outputKind))
            {
                return CommandErrors.Invalid(parse, $"unknown output format '{parse.GetValue(outputFormat)}' (use raw or qcow2)");
            }
            bool compressed = parse.GetValue(compress);
            string[] items = (parse.GetValue(createOptions) ?? []).SelectMany(o => o.Split(',', StringSplitOptions.RemoveEmptyEntries)).ToArray();
            OverlayFormat? overlay = ImageFormats.Overlay(outputKind);
            OverlayConversionOptions conversion = new() { Compressed = compressed, Settings = items };
            if (overlay?.RefusesConversionTarget(conversion) is { } refusal)
            {
                return CommandErrors.Invalid(parse, refusal.Error!);
            }
            if (overlay == null && compressed)
            {
                // qemu-img's refusal for formats that cannot hold compressed clusters.
                return CommandErrors.Invalid(parse, "Compression not supported for this file format (use -O qcow2)");
            }
            if (overlay == null && items.Length > 0)
            {
                return CommandErrors.Invalid(parse, $"unsupported target option '{items[0]}' (-O qcow2 takes compression_type=zlib|zstd)");
            }
            if (!ImageFiles.TryResolveFormat(parse, sourcePath, parse.GetValue(format), out ImageFormat sourceKind, out int exitCode))
            {
                return exitCode;
            }
            if (ImageFiles.FullName(sourcePath) == ImageFiles.FullName(targetPath))
            {
                return CommandErrors.Invalid(parse, "the source and the target are the same file");
            }
            if (ImageLuns.IsLun(targetPath) && overlay != null)
            {
                return CommandErrors.Invalid(parse, $"'{targetPath}': qcow2 images live in files; a LUN is a raw target (-O raw)");
            }
            using IBlockDevice input = ImageFiles.OpenForIo(sourcePath, sourceKind, parse.GetValue(allowBase), readOnly: true);
            long size = input.Info.SizeBytes;
            using ProgressBar? bar = parse.GetValue(progress) ? new ProgressBar(parse.Error(), "converting", showBytes: true) : null;
            Convert(input, sourcePath, targetPath, overlay, conversion, size, bar, cancellationToken);
            bar?.Complete();
            return 0;
        }));
        return command;
    }

    /// <summary>Writes the source into a new raw file, or into a new image of <paramref name="overlay"/> made by the format.</summary>
    private static void Convert(IBlockDevice input, string sourceName, string targetPath, OverlayFormat? overlay, OverlayConversionOptions conversion, long size, ProgressBar? bar, CancellationToken cancellationToken)
    {
        if (ImageLuns.IsLun(targetPath))
        {
            using IBlockDevice lun = ImageFiles.OpenImage(targetPath, readOnly: false);
            if (lun.Info.SizeBytes < size)
            {
                throw new StorageException($"the LUN '{targetPath}' holds {lun.Info.SizeBytes} bytes, less than the source's {size}; a LUN is resized on its target, not here");
            }
            if (size % lun.Info.LogicalSectorSize != 0)
            {
                throw new StorageException($"the source's size ({size} bytes) is not a whole number of the LUN's {lun.Info.LogicalSectorSize}-byte blocks");
            }
            Copy(input, sourceName, lun, targetPath, size, targetReadsZeros: false, bar, cancellationToken);
            IoStatus flushed = lun.Flush();
            if (flushed != IoStatus.Ok)
            {
                throw new StorageException($"finishing '{targetPath}' failed: {flushed.Describe()}");
            }
            return;
        }
        string fullTarget = Path.GetFullPath(targetPath);
        if (File.Exists(fullTarget))
        {
            // Replacing truncates the file, so first make sure nobody (QEMU, a served disk) holds it.
            FileImageDevice.Open(fullTarget, readOnly: false).Dispose();
        }
        OverlayConversionTarget? target = overlay?.CreateConversionTarget(fullTarget, size, conversion);
        IBlockDevice output = target?.Device ?? CreateRaw(fullTarget, size);
        try
        {
            if (conversion.Compressed)
            {
                CopyCompressed(input, sourceName, target!, targetPath, size, bar, cancellationToken);
            }
            else
            {
                Copy(input, sourceName, output, targetPath, size, targetReadsZeros: true, bar, cancellationToken);
            }
            IoStatus closed = target?.Finish() ?? output.Flush();
            if (closed != IoStatus.Ok)
            {
                throw new StorageException($"finishing '{targetPath}' failed: {closed.Describe()}");
            }
        }
        finally
        {
            ((IDisposable?)target ?? output).Dispose();
        }
    }

    private static FileImageDevice CreateRaw(string path, long size)
    {
        FileImageDevice file = FileImageDevice.Create(path, overwrite: true);
        IoStatus sized = file.EnsureSize(size);
        if (sized != IoStatus.Ok)
        {
            file.Dispose();
            throw new StorageException($"sizing '{path}' to {size} bytes failed: {sized.Describe()}");
        }
        return file;
    }

    /// <summary>
    /// Copies every run of non-zero <see cref="ImageChunk.ZeroBlock"/>-sized blocks when the target
    /// reads zeros elsewhere already (a new file); otherwise (a LUN) every byte.
    /// </summary>
    private static void Copy(IBlockDevice input, string sourceName, IBlockDevice output, string targetName, long size, bool targetReadsZeros, ProgressBar? bar, CancellationToken cancellationToken)
    {
        using ImageChunk chunk = new();
        for (long offset = 0; offset < size; offset += ImageChunk.Bytes)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int length = ImageChunk.LengthAt(offset, size);
            Span<byte> data = chunk.Read(input, sourceName, offset, length);
            if (!targetReadsZeros)
            {
                chunk.Write(output, targetName, offset, 0, length);
                bar?.Report(offset + length, size);
                continue;
            }
            int runStart = -1;
            for (int at = 0; at < length; at += ImageChunk.ZeroBlock)
            {
                bool zero = data.Slice(at, Math.Min(ImageChunk.ZeroBlock, length - at)).IndexOfAnyExcept((byte)0) < 0;
                if (!zero && runStart < 0)
                {
                    runStart = at;
                }
                else if (zero && runStart >= 0)
                {
                    chunk.Write(output, targetName, offset + runStart, runStart, at - runStart);
                    runStart = -1;
                }
            }
            if (runStart >= 0)
            {
                chunk.Write(output, targetName, offset + runStart, runStart, length - runStart);
            }
            bar?.Report(offset + length, size);
        }
    }

    /// <summary>Every cluster holding anything but zeros, compressed (qemu-img convert -c skips zero clusters too).</summary>
    private static void CopyCompressed(IBlockDevice input, string sourceName, OverlayConversionTarget output, string targetName, long size, ProgressBar? bar, CancellationToken cancellationToken)
    {
        using ImageChunk chunk = new();
        int cluster = output.CompressionUnit;
        for (long offset = 0; offset < size; offset += ImageChunk.Bytes)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int length = ImageChunk.LengthAt(offset, size);
            Span<byte> data = chunk.Read(input, sourceName, offset, length);
            for (int at = 0; at < length; at += cluster)
            {
                Span<byte> part = data.Slice(at, Math.Min(cluster, length - at));
                if (part.IndexOfAnyExcept((byte)0) < 0)
                {
                    continue;
                }
                if (output.WriteCompressed(offset + at, part, out string? error) != IoStatus.Ok)
                {
                    throw new StorageException($"writing '{targetName}' at {offset + at} failed: {error}");
                }
            }
            bar?.Report(offset + length, size);
        }
    }
}
