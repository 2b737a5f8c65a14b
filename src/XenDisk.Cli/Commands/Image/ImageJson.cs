using System.Text.Json.Serialization;
using XenDisk.Cli.Bench;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// Source-generated JSON for the --json output of `image`, `io` and `bench cow` (no reflection, so the
/// command line can be published trimmed; the same options as the CLI's other JSON, and absent values
/// left out rather than written as null). A command that prints a new type as JSON adds it here.
/// </summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ImageDescription))]
[JsonSerializable(typeof(List<ImageDescription>))]
[JsonSerializable(typeof(ImageMeasureCommand.Measurement))]
[JsonSerializable(typeof(ImageCheckCommand.CheckResult))]
[JsonSerializable(typeof(List<ImageMapCommand.Extent>))]
[JsonSerializable(typeof(ImageMaintenanceCommands.OperationReport))]
[JsonSerializable(typeof(CowBenchReport))]
internal sealed partial class ImageJsonContext : JsonSerializerContext;
