using System.Text;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using XenDisk.Backend.DataPlane;
using XenDisk.Service.Telemetry;

namespace XenDisk.Service.Configuration;

/// <summary>
/// The rules no attribute can express: values that must parse, agree with each other or with the
/// platform. Runs after the source-generated validators; each message starts with the key it is about.
/// </summary>
internal sealed partial class SettingsRules :
    IValidateOptions<BackendSettings>,
    IValidateOptions<StorageSettings>,
    IValidateOptions<TelemetrySettings>,
    IValidateOptions<ControlSettings>,
    IValidateOptions<IscsiSettings>
{
    public ValidateOptionsResult Validate(string? name, IscsiSettings options)
    {
        List<string> errors = [.. options.Problems()];
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>sun_path in struct sockaddr_un is 108 bytes including the terminating NUL.</summary>
    internal const int MaxSocketPathBytes = 107;

    public ValidateOptionsResult Validate(string? name, BackendSettings options)
    {
        var errors = new List<string>();
        if (options.Kinds is { Count: 0 })
        {
            errors.Add("Backend:Kinds must list at least one backend kind (for example [\"vbd\"]).");
        }

        if (options.Kinds is { } kinds)
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (string? kind in kinds)
            {
                if (string.IsNullOrEmpty(kind) || !kind.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
                {
                    errors.Add($"Backend:Kinds: \"{kind}\" is not a backend kind: use letters, digits, '-' and '_' only (for example \"vbd\" or \"vbd3\").");
                }
                else if (!seen.Add(kind))
                {
                    errors.Add($"Backend:Kinds: \"{kind}\" is listed twice.");
                }
            }
        }

        if (options.HotplugScript is { } script && (script.Length == 0 || script.Contains('/', StringComparison.Ordinal) || script.Any(char.IsControl)))
        {
            errors.Add("Backend:HotplugScript must be a file name without a directory (for example \"xendisk\" for script=/etc/xen/scripts/xendisk), or absent to serve every device.");
        }

        bool dataPathKnown = Enum.TryParse(options.DataPath, ignoreCase: true, out DataPath dataPath)
            && Enum.IsDefined(dataPath) && !char.IsAsciiDigit(options.DataPath.FirstOrDefault());
        if (options.DataPath is not null && !dataPathKnown)
        {
            errors.Add($"Backend:DataPath must be GrantMap or GrantCopy; \"{options.DataPath}\" is neither.");
        }

        if (!string.IsNullOrEmpty(options.InflightDirectory) && (!Path.IsPathRooted(options.InflightDirectory) || options.InflightDirectory == "/"))
        {
            errors.Add($"Backend:InflightDirectory must be an absolute directory other than / (or empty to keep no in-flight records); \"{options.InflightDirectory}\" is not.");
        }

        if (options.IoEngine is not null && !(Enum.TryParse(options.IoEngine, ignoreCase: true, out IoEngine engine)
            && Enum.IsDefined(engine) && !char.IsAsciiDigit(options.IoEngine.FirstOrDefault())))
        {
            errors.Add($"Backend:IoEngine must be Auto, IoUring or Threads; \"{options.IoEngine}\" is none of them.");
        }

        if (dataPathKnown && dataPath == DataPath.GrantCopy && options.PersistentGrants)
        {
            errors.Add("Backend:PersistentGrants must be false when Backend:DataPath is GrantCopy: grant copy never maps a guest page, so there is nothing to keep mapped, and offering feature-persistent would make frontends keep pages granted for nothing.");
        }

        return Result(errors);
    }

    public ValidateOptionsResult Validate(string? name, StorageSettings options)
    {
        var errors = new List<string>();
        if (options.AllowedImageDirectories is { Count: 0 })
        {
            errors.Add("Storage:AllowedImageDirectories must list at least one directory (for example [\"/var/lib/xendisk/images\"]).");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (string? directory in options.AllowedImageDirectories ?? [])
        {
            if (string.IsNullOrWhiteSpace(directory) || directory.Contains('\0', StringComparison.Ordinal) || !Path.IsPathFullyQualified(directory))
            {
                errors.Add($"Storage:AllowedImageDirectories: \"{directory}\" must be an absolute directory path.");
            }
            else if (Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory)) is "/" or "")
            {
                errors.Add("Storage:AllowedImageDirectories: \"/\" would allow every file on the host; name the directories that hold images.");
            }
            else if (!seen.Add(Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory))))
            {
                errors.Add($"Storage:AllowedImageDirectories: \"{directory}\" is listed twice.");
            }
        }

        return Result(errors);
    }

    public ValidateOptionsResult Validate(string? name, TelemetrySettings options)
    {
        var errors = new List<string>();
        if (options.Prometheus is { Enabled: true, ListenAddress: { } listen })
        {
            if (!Uri.TryCreate(listen, UriKind.Absolute, out _))
            {
                // The URI parser refuses a port beyond 65535 as it refuses a malformed URL; name the port.
                Match port = UrlPort().Match(listen);
                errors.Add(port.Success && (!int.TryParse(port.Groups["port"].Value, out int number) || number > 65535)
                    ? $"Telemetry:Prometheus:ListenAddress \"{listen}\" has port {port.Groups["port"].Value}; a port is 1 to 65535."
                    : $"Telemetry:Prometheus:ListenAddress \"{listen}\" is not an absolute URL (for example http://127.0.0.1:9464/metrics).");
            }
            else if (!PrometheusListenAddress.TryParse(listen, out _, out string? problem))
            {
                errors.Add($"Telemetry:Prometheus:ListenAddress \"{listen}\" {problem}.");
            }
        }

        if (options.Otlp is { Enabled: true } otlp)
        {
            bool grpc = string.Equals(otlp.Protocol, "Grpc", StringComparison.OrdinalIgnoreCase);
            bool http = string.Equals(otlp.Protocol, "HttpProtobuf", StringComparison.OrdinalIgnoreCase);
            if (!grpc && !http)
            {
                errors.Add($"Telemetry:Otlp:Protocol must be Grpc or HttpProtobuf; \"{otlp.Protocol}\" is neither.");
            }

            if (!Uri.TryCreate(otlp.Endpoint, UriKind.Absolute, out Uri? endpoint) || (endpoint.Scheme != Uri.UriSchemeHttp && endpoint.Scheme != Uri.UriSchemeHttps))
            {
                errors.Add($"Telemetry:Otlp:Endpoint \"{otlp.Endpoint}\" must be an absolute http:// or https:// URL (for example http://127.0.0.1:4317).");
            }
            else if (http && !endpoint.AbsolutePath.EndsWith("/v1/metrics", StringComparison.Ordinal))
            {
                errors.Add($"Telemetry:Otlp:Endpoint \"{otlp.Endpoint}\" must end with /v1/metrics when Telemetry:Otlp:Protocol is HttpProtobuf (the exporter sends to the URL as given).");
            }
        }

        return Result(errors);
    }

    public ValidateOptionsResult Validate(string? name, ControlSettings options)
    {
        var errors = new List<string>();
        string? path = options.SocketPath;
        if (path is not null)
        {
            if (path.Contains('\0', StringComparison.Ordinal) || !Path.IsPathFullyQualified(path) || path.EndsWith('/'))
            {
                errors.Add($"Control:SocketPath \"{path}\" must be an absolute file path (for example /run/xendisk/control.sock).");
            }
            else if (Encoding.UTF8.GetByteCount(path) > MaxSocketPathBytes)
            {
                errors.Add($"Control:SocketPath is {Encoding.UTF8.GetByteCount(path)} bytes long; a Unix socket path holds at most {MaxSocketPathBytes}.");
            }
        }

        return Result(errors);
    }

    private static ValidateOptionsResult Result(List<string> errors) =>
        errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);

    /// <summary>The port of a scheme://host:port URL (an IPv6 host in brackets), digits only.</summary>
    [GeneratedRegex(@"^[A-Za-z][A-Za-z0-9+.-]*://(?:\[[^\]]*\]|[^/:\[\]]*):(?<port>\d+)(?:/|$)")]
    private static partial Regex UrlPort();
}
