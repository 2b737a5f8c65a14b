using System.CommandLine;

namespace XenDisk.Cli.Commands.Image;

/// <summary>`xendisk image info [-f FMT] [--json] IMAGE`: what qemu-img info shows, plus allocation and metadata memory.</summary>
internal static class ImageInfoCommand
{
    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var json = new Option<bool>("--json") { Description = "Print the description as JSON" };
        var image = new Argument<string>("IMAGE") { Description = "The image file" };
        var command = new Command("info", "Describe an image: format, sizes, backing file, allocation, features, metadata memory")
        {
            format, json, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            ImageDescription description = ImageDescription.Read(path, kind);
            if (parse.WantsJson())
            {
                parse.WriteJson(description, ImageJsonContext.Default.ImageDescription);
            }
            else
            {
                description.WriteText(parse.Out());
            }
            return 0;
        }));
        return command;
    }
}
