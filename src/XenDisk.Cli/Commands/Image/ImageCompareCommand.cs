using System.CommandLine;
using System.Globalization;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image compare [-f FMT] [-F FMT] [-s] [-p] IMAGE1 IMAGE2`, as qemu-img compare: the two
/// virtual disks (backing chains included) are compared, and the exit code says how it went, as
/// qemu-img documents: 0 identical, 1 different (the first differing offset is printed), 2 an error.
/// Images of different sizes are identical when the larger one reads zeros beyond the smaller, unless -s.
/// </summary>
internal static class ImageCompareCommand
{
    public const int Identical = 0;
    public const int Different = 1;
    public const int Error = 2;

    /// <summary>qemu-img compare reports mismatches at sector granularity: the offset of the first differing 512-byte sector.</summary>
    private const int Sector = 512;

    public static Command Create()
    {
        var format1 = new Option<string?>("-f", "--format") { Description = $"The first image's format ({ImageFormats.Names}); read from its magic when not given" };
        var format2 = new Option<string?>("-F", "--second-format") { Description = "The second image's format; read from its magic when not given" };
        var strict = new Option<bool>("-s", "--strict") { Description = "Images of different sizes are different, whatever the larger one holds beyond the smaller" };
        var progress = new Option<bool>("-p", "--progress") { Description = "Show progress on stderr: bytes, rate and time left" };
        var allowBase = ImageFiles.AllowBaseOption();
        var image1 = new Argument<string>("IMAGE1") { Description = "The first image" };
        var image2 = new Argument<string>("IMAGE2") { Description = "The second image" };
        var command = new Command("compare", "Compare two images' contents (exit 0 identical, 1 different, 2 error)")
        {
            format1, format2, strict, progress, allowBase, image1, image2,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string first = parse.GetValue(image1)!;
            string second = parse.GetValue(image2)!;
            // Any failure is exit code 2 here: 1 means "different" (qemu-img compare's convention).
            if (!ImageFiles.TryResolveFormat(parse, first, parse.GetValue(format1), out ImageFormat kind1, out _)
                || !ImageFiles.TryResolveFormat(parse, second, parse.GetValue(format2), out ImageFormat kind2, out _))
            {
                return Error;
            }
            try
            {
                using IBlockDevice a = ImageFiles.OpenForIo(first, kind1, parse.GetValue(allowBase), readOnly: true);
                using IBlockDevice b = ImageFiles.OpenForIo(second, kind2, parse.GetValue(allowBase), readOnly: true);
                using ProgressBar? bar = parse.GetValue(progress) ? new ProgressBar(parse.Error(), "comparing", showBytes: true) : null;
                int result = Compare(parse, a, first, b, second, parse.GetValue(strict), bar, cancellationToken);
                bar?.Complete();
                return result;
            }
            catch (Exception e) when (e is StorageException or IOException or UnauthorizedAccessException)
            {
                return CommandErrors.Failed(parse, e.Message, Error);
            }
        }));
        return command;
    }

    private static int Compare(ParseResult parse, IBlockDevice a, string nameA, IBlockDevice b, string nameB, bool strict, ProgressBar? bar, CancellationToken cancellationToken)
    {
        long sizeA = a.Info.SizeBytes;
        long sizeB = b.Info.SizeBytes;
        if (sizeA != sizeB)
        {
            if (strict)
            {
                parse.Out().WriteLine("Strict mode: Image size mismatch!");
                return Different;
            }
            parse.Out().WriteLine("Warning: Image size mismatch!");
        }
        long common = Math.Min(sizeA, sizeB);
        long total = Math.Max(sizeA, sizeB);
        using ImageChunk chunkA = new();
        using ImageChunk chunkB = new();
        for (long offset = 0; offset < common; offset += ImageChunk.Bytes)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int length = ImageChunk.LengthAt(offset, common);
            Span<byte> dataA = chunkA.Read(a, nameA, offset, length);
            Span<byte> dataB = chunkB.Read(b, nameB, offset, length);
            int differs = dataA.CommonPrefixLength(dataB);
            if (differs < length)
            {
                return Mismatch(parse, offset + differs / Sector * Sector);
            }
            bar?.Report(offset + length, total);
        }
        // Beyond the smaller image, the larger one must read zeros (qemu-img compare without -s).
        (IBlockDevice larger, string largerName) = sizeA > sizeB ? (a, nameA) : (b, nameB);
        for (long offset = common; offset < total; offset += ImageChunk.Bytes)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int length = ImageChunk.LengthAt(offset, total);
            int nonZero = chunkA.Read(larger, largerName, offset, length).IndexOfAnyExcept((byte)0);
            if (nonZero >= 0)
            {
                return Mismatch(parse, offset + nonZero / Sector * Sector);
            }
            bar?.Report(offset + length, total);
        }
        parse.Out().WriteLine("Images are identical.");
        return Identical;
    }

    private static int Mismatch(ParseResult parse, long offset)
    {
        parse.Out().WriteLine(string.Create(CultureInfo.InvariantCulture, $"Content mismatch at offset {offset}!"));
        return Different;
    }
}
