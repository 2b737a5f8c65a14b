using System.Text.Json.Serialization;
using XenDisk.Cli.Bench;
using XenDisk.Cli.Commands;
using XenDisk.Cli.Demo;

namespace XenDisk.Cli;

/// <summary>
/// Source-generated JSON for every `--json` output: no reflection, so the command line can be
/// published trimmed. A command that prints a new type as JSON adds it here.
/// </summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, UseStringEnumConverter = true)]
[JsonSerializable(typeof(DemoReport))]
[JsonSerializable(typeof(RingBenchResult))]
[JsonSerializable(typeof(HydrateCommand.Report))]
[JsonSerializable(typeof(ResizeCommand.Report), TypeInfoPropertyName = "ResizeCommandReport")]
internal sealed partial class CliJsonContext : JsonSerializerContext;
