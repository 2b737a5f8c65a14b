using System.CommandLine;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Qcow2;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image info [-f FMT] [--json] [--backing-chain] IMAGE`: what qemu-img info shows, plus
/// allocation and metadata memory. With --backing-chain, every image of the chain from IMAGE down, as
/// qemu-img info --backing-chain prints them (text separated by blank lines, JSON as an array). Backing
/// files are followed only where the backing file policy allows (the image's directory, --allow-base),
/// in the format their image records: never probed.
/// </summary>
internal static class ImageInfoCommand
{
    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var json = new Option<bool>("--json") { Description = "Print the description as JSON" };
        var chain = new Option<bool>("--backing-chain") { Description = "Describe every image of the backing chain, IMAGE first" };
        var allowBase = ImageFiles.AllowBaseOption();
        var image = new Argument<string>("IMAGE") { Description = "The image file" };
        var command = new Command("info", "Describe an image: format, sizes, backing file, allocation, features, metadata memory")
        {
            format, json, chain, allowBase, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            ImageDescription description = ImageDescription.Read(path, kind);
            if (!parse.GetValue(chain))
            {
                if (parse.WantsJson())
                {
                    parse.WriteJson(description, ImageJsonContext.Default.ImageDescription);
                }
                else
                {
                    description.WriteText(parse.Out());
                }
                return 0;
            }
            List<ImageDescription> images = Chain(path, description, parse.GetValue(allowBase));
            if (parse.WantsJson())
            {
                parse.WriteJson(images, ImageJsonContext.Default.ListImageDescription);
            }
            else
            {
                for (int i = 0; i < images.Count; i++)
                {
                    if (i > 0)
                    {
                        parse.Out().WriteLine();
                    }
                    images[i].WriteText(parse.Out());
                }
            }
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// The image and the backing files below it. Throws <see cref="StorageException"/> for a backing
    /// file the policy does not allow, one without a recorded format, a missing one, or a chain deeper
    /// than the engine opens (a loop).
    /// </summary>
    private static List<ImageDescription> Chain(string path, ImageDescription top, string[]? allowBase)
    {
        List<ImageDescription> images = [top];
        ImageDescription current = top;
        string currentPath = path;
        const int maximumDepth = Qcow2OpenOptions.DefaultMaximumChainDepth;
        while (current.FullBackingFilename is string next)
        {
            if (images.Count > maximumDepth)
            {
                throw new StorageException($"the backing chain of '{path}' is deeper than {maximumDepth} images (a loop?)");
            }
            if (!ImageFiles.BackingPolicy(path, allowBase).Allows(next, current.BackingFile ?? next))
            {
                throw new StorageException($"'{currentPath}' names the backing file '{current.BackingFile}' ({next}), which is outside the allowed directories; allow it with --allow-base {Path.GetDirectoryName(next)}");
            }
            if (!ImageFormats.TryParse(current.BackingFormat, out ImageFormat backingKind) || ImageFormats.Overlay(backingKind) is { CanBeBase: false })
            {
                throw new StorageException($"'{currentPath}' records no usable backing format for '{current.BackingFile}'; formats are never probed (set it with 'qemu-img rebase -u -F raw|qcow2')");
            }
            if (!ImageFiles.Exists(next))
            {
                throw new StorageException($"the backing file '{next}' of '{currentPath}' does not exist");
            }
            current = ImageDescription.Read(next, backingKind);
            currentPath = next;
            images.Add(current);
        }
        return images;
    }
}
