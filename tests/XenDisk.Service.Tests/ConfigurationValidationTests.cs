using Microsoft.Extensions.Configuration;
using XenDisk.Service.Configuration;
using XenDisk.Service.Hosting;
using XenDisk.Service.Simulation;

namespace XenDisk.Service.Tests;

public sealed class ConfigurationValidationTests
{
    private static IReadOnlyList<string> Validate(params (string Key, string? Value)[] settings)
    {
        IConfigurationRoot configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(settings.Select(s => new KeyValuePair<string, string?>(s.Key, s.Value)))
            .Build();
        return ServiceConfiguration.Validate(configuration);
    }

    [Fact]
    public void The_defaults_are_valid()
    {
        Assert.Empty(Validate());
    }

    [Fact]
    public void Data_plane_settings_reach_the_data_plane()
    {
        IConfigurationRoot configuration = new ConfigurationBuilder()
            .AddInMemoryCollection([new("Backend:SubmissionBatch", "3"), new("Backend:IoThreadsPerRing", "5")])
            .Build();
        Assert.Empty(ServiceConfiguration.Validate(configuration));
        var settings = new BackendSettings();
        configuration.GetSection(BackendSettings.SectionName).Bind(settings);

        Backend.DataPlane.DataPlaneOptions options = settings.ToBackendOptions(TimeProvider.System).DataPlane;
        Assert.Equal(3, options.SubmissionBatch);
        Assert.Equal(5, options.IoThreadsPerRing);
    }

    [Fact]
    public void The_shipped_configuration_file_is_valid()
    {
        string file = Path.Combine(RepositoryRoot(), "config", "xendisk.json");
        IConfigurationRoot configuration = new ConfigurationBuilder().AddJsonFile(file, optional: false).Build();
        Assert.Empty(ServiceConfiguration.Validate(configuration));
    }

    [Theory]
    [InlineData("Backend:MaxRingPageOrder", "5", "Backend:MaxRingPageOrder")]
    [InlineData("Backend:MaxRingPageOrder", "-1", "Backend:MaxRingPageOrder")]
    [InlineData("Backend:MaxQueues", "0", "Backend:MaxQueues")]
    [InlineData("Backend:MaxQueues", "257", "Backend:MaxQueues")]
    [InlineData("Backend:MaxQueues", "many", "Backend:MaxQueues")]
    [InlineData("Backend:MaxIndirectSegments", "4097", "Backend:MaxIndirectSegments")]
    [InlineData("Backend:MaxIndirectSegments", "-5", "Backend:MaxIndirectSegments")]
    [InlineData("Backend:IoThreadsPerRing", "0", "Backend:IoThreadsPerRing")]
    [InlineData("Backend:IoThreadsPerRing", "1000", "Backend:IoThreadsPerRing")]
    [InlineData("Backend:SubmissionBatch", "0", "Backend:SubmissionBatch")]
    [InlineData("Backend:SubmissionBatch", "513", "Backend:SubmissionBatch")]
    [InlineData("Backend:RingDrainTimeoutSeconds", "0", "Backend:RingDrainTimeoutSeconds")]
    [InlineData("Backend:SizeCheckSeconds", "-1", "Backend:SizeCheckSeconds")]
    [InlineData("Backend:DataPath", "GrantMapp", "Backend:DataPath")]
    [InlineData("Backend:DataPath", "1", "Backend:DataPath")]
    [InlineData("Backend:DataPath", "", "Backend:DataPath")]
    [InlineData("Backend:IoEngine", "Turbo", "Backend:IoEngine")]
    [InlineData("Backend:IoEngine", "2", "Backend:IoEngine")]
    [InlineData("Backend:HotplugScript", "/etc/xen/scripts/xendisk", "Backend:HotplugScript")]
    [InlineData("Backend:HotplugScript", "", "Backend:HotplugScript")]
    [InlineData("Backend:Kinds:0", "vbd/evil", "Backend:Kinds")]
    [InlineData("Backend:Kinds:0", "", "Backend:Kinds")]
    [InlineData("Backend:PersistentGrants", "maybe", "Backend:PersistentGrants")]
    [InlineData("Backend:MaxQueue", "4", "Backend: unknown key")]
    [InlineData("Storage:AllowedImageDirectories:0", "images", "Storage:AllowedImageDirectories")]
    [InlineData("Storage:AllowedImageDirectories:0", "/", "Storage:AllowedImageDirectories")]
    [InlineData("Storage:AllowBlockDevices", "yes", "Storage:AllowBlockDevices")]
    [InlineData("Telemetry:Prometheus:ListenAddress", "127.0.0.1:9464", "Telemetry:Prometheus:ListenAddress")]
    [InlineData("Telemetry:Prometheus:ListenAddress", "https://127.0.0.1:9464/metrics", "Telemetry:Prometheus:ListenAddress")]
    [InlineData("Telemetry:Prometheus:ListenAddress", "http://metrics.example.org:9464/metrics", "Telemetry:Prometheus:ListenAddress")]
    [InlineData("Telemetry:Prometheus:ListenAddress", "http://127.0.0.1:9464/metrics?x", "Telemetry:Prometheus:ListenAddress")]
    [InlineData("Telemetry:Prometheus:Port", "9464", "Telemetry:Prometheus: unknown key")]
    [InlineData("Telemetry:Otlp:ExportIntervalSeconds", "0", "Telemetry:Otlp:ExportIntervalSeconds")]
    [InlineData("Control:SocketPath", "control.sock", "Control:SocketPath")]
    [InlineData("Control:SocketPath", "/run/xendisk/", "Control:SocketPath")]
    [InlineData("Simulation:Guests", "0", "Simulation:Guests")]
    [InlineData("Simulation:DiskSizeMiB", "1", "Simulation:DiskSizeMiB")]
    [InlineData("Simulation:PauseMilliseconds", "-1", "Simulation:PauseMilliseconds")]
    [InlineData("Backnd:MaxQueues", "4", "Backnd: unknown configuration section")]
    public void A_bad_value_is_reported_with_its_key(string key, string value, string expected)
    {
        IReadOnlyList<string> problems = Validate((key, value));
        Assert.NotEmpty(problems);
        Assert.Contains(problems, p => p.Contains(expected, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("Otlp endpoint not a URL", "not a url", "Grpc", "Telemetry:Otlp:Endpoint")]
    [InlineData("Otlp endpoint not http", "ftp://collector:4317", "Grpc", "Telemetry:Otlp:Endpoint")]
    [InlineData("Otlp protocol unknown", "http://127.0.0.1:4317", "Thrift", "Telemetry:Otlp:Protocol")]
    [InlineData("HTTP needs the signal path", "http://127.0.0.1:4318", "HttpProtobuf", "Telemetry:Otlp:Endpoint")]
    public void Otlp_settings_are_checked_when_export_is_enabled(string because, string endpoint, string protocol, string expected)
    {
        _ = because;
        IReadOnlyList<string> problems = Validate(("Telemetry:Otlp:Enabled", "true"), ("Telemetry:Otlp:Endpoint", endpoint), ("Telemetry:Otlp:Protocol", protocol));
        Assert.Contains(problems, p => p.StartsWith(expected, StringComparison.Ordinal));

        // The same values are ignored while export is off.
        Assert.Empty(Validate(("Telemetry:Otlp:Enabled", "false"), ("Telemetry:Otlp:Endpoint", endpoint), ("Telemetry:Otlp:Protocol", protocol)));
    }

    [Fact]
    public void Persistent_grants_with_grant_copy_is_a_contradiction()
    {
        IReadOnlyList<string> problems = Validate(("Backend:DataPath", "GrantCopy"), ("Backend:PersistentGrants", "true"));
        string problem = Assert.Single(problems);
        Assert.StartsWith("Backend:PersistentGrants must be false when Backend:DataPath is GrantCopy", problem, StringComparison.Ordinal);
        Assert.Empty(Validate(("Backend:DataPath", "GrantCopy"), ("Backend:PersistentGrants", "false")));
        Assert.Empty(Validate(("Backend:DataPath", "grantcopy"), ("Backend:PersistentGrants", "false")));
    }

    [Fact]
    public void A_kind_listed_twice_is_reported()
    {
        IReadOnlyList<string> problems = Validate(("Backend:Kinds:0", "vbd"), ("Backend:Kinds:1", "vbd"));
        Assert.Contains(problems, p => p.StartsWith("Backend:Kinds: \"vbd\" is listed twice", StringComparison.Ordinal));
    }

    [Fact]
    public void A_socket_path_longer_than_sun_path_is_reported()
    {
        IReadOnlyList<string> problems = Validate(("Control:SocketPath", "/run/" + new string('x', 120) + ".sock"));
        Assert.Contains(problems, p => p.StartsWith("Control:SocketPath is", StringComparison.Ordinal) && p.Contains("107", StringComparison.Ordinal));
    }

    [Fact]
    public void Every_problem_is_reported_at_once()
    {
        IReadOnlyList<string> problems = Validate(
            ("Backend:MaxQueues", "0"),
            ("Backend:MaxRingPageOrder", "9"),
            ("Control:SocketPath", "relative.sock"),
            ("Storage:AllowedImageDirectories:0", "relative"));
        Assert.Contains(problems, p => p.StartsWith("Backend:MaxQueues", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.StartsWith("Backend:MaxRingPageOrder", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.StartsWith("Control:SocketPath", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.StartsWith("Storage:AllowedImageDirectories", StringComparison.Ordinal));
    }

    [Fact]
    public void Configured_lists_replace_the_defaults_instead_of_adding_to_them()
    {
        IConfigurationRoot configuration = new ConfigurationBuilder()
            .AddInMemoryCollection([new("Backend:Kinds:0", "vbd3"), new("Storage:AllowedImageDirectories:0", "/srv/images")])
            .Build();
        var backend = new BackendSettings();
        configuration.GetSection("Backend").Bind(backend);
        var storage = new StorageSettings();
        configuration.GetSection("Storage").Bind(storage);
        Assert.Equal(["vbd3"], backend.EffectiveKinds);
        Assert.Equal(["/srv/images"], storage.EffectiveAllowedImageDirectories);
    }

    [Fact]
    public void Command_line_overrides_are_validated_too()
    {
        IConfigurationRoot configuration = new ConfigurationBuilder().Build();
        IReadOnlyList<string> problems = XenDiskServiceHost.ValidateWithCommandLine(
            new ServeOptions { HotplugScript = "scripts/xendisk", ExtraKinds = ["vbd3", "bad kind"] }, configuration);
        Assert.Contains(problems, p => p.StartsWith("Backend:HotplugScript", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("\"bad kind\"", StringComparison.Ordinal));
        Assert.Empty(XenDiskServiceHost.ValidateWithCommandLine(new ServeOptions { HotplugScript = "xendisk", ExtraKinds = ["vbd3"] }, configuration));
    }

    [Fact]
    public async Task Serve_with_a_bad_configuration_exits_with_EX_CONFIG_naming_each_key_on_its_own_line()
    {
        var errors = new StringWriter();
        int code = await XenDiskServiceHost.RunAsync(new ServeOptions
        {
            Simulation = new SimulatedServicePlatform(),
            UseEnvironment = false,
            ConfigPath = "/nonexistent/xendisk.json",
            ConfigurationOverrides = new Dictionary<string, string?>
            {
                ["Backend:MaxRingPageOrder"] = "7",
                ["Telemetry:Prometheus:ListenAddress"] = "nowhere",
            },
        }, errors, CancellationToken.None);
        Assert.Equal(ServeExitCodes.InvalidConfiguration, code);
        string[] lines = errors.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(lines, l => l.TrimStart().StartsWith("Backend:MaxRingPageOrder", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.TrimStart().StartsWith("Telemetry:Prometheus:ListenAddress", StringComparison.Ordinal));
    }

    [Fact]
    public async Task An_explicit_configuration_file_that_is_missing_or_malformed_is_an_error()
    {
        var errors = new StringWriter();
        int code = await XenDiskServiceHost.RunAsync(new ServeOptions
        {
            Simulation = new SimulatedServicePlatform(),
            UseEnvironment = false,
            ConfigPath = "/nonexistent/xendisk.json",
            ConfigPathExplicit = true,
        }, errors, CancellationToken.None);
        Assert.Equal(ServeExitCodes.InvalidConfiguration, code);
        Assert.Contains("/nonexistent/xendisk.json", errors.ToString(), StringComparison.Ordinal);

        string malformed = Path.Combine(Path.GetTempPath(), $"xendisk-bad-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(malformed, "{ \"Backend\": { \"MaxQueues\": 4, ");
        try
        {
            errors = new StringWriter();
            code = await XenDiskServiceHost.RunAsync(new ServeOptions
            {
                Simulation = new SimulatedServicePlatform(),
                UseEnvironment = false,
                ConfigPath = malformed,
                ConfigPathExplicit = true,
            }, errors, CancellationToken.None);
            Assert.Equal(ServeExitCodes.InvalidConfiguration, code);
            Assert.Contains(malformed, errors.ToString(), StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(malformed);
        }
    }

    [Fact]
    public void An_unknown_key_does_not_hide_the_other_errors_of_its_section_and_a_bad_port_is_named()
    {
        IConfiguration configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Backend:Bogus"] = "1",
            ["Backend:MaxRingPageOrder"] = "9",
            ["Telemetry:Prometheus:Enabled"] = "true",
            ["Telemetry:Prometheus:ListenAddress"] = "http://127.0.0.1:99999/metrics",
        }).Build();
        IReadOnlyList<string> problems = ServiceConfiguration.Validate(configuration);
        Assert.Contains(problems, p => p.Contains("unknown key(s) 'Bogus'", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.StartsWith("Backend:MaxRingPageOrder", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("has port 99999; a port is 1 to 65535", StringComparison.Ordinal));
        Assert.DoesNotContain(problems, p => p.Contains("not an absolute URL", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_JSON_syntax_error_is_reported_with_its_line_and_position()
    {
        string malformed = Path.Combine(Path.GetTempPath(), $"xendisk-bad-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(malformed, "{\n  \"Backend\": {\n    \"Kinds\": [\"vbd\",\n  }\n}\n");
        try
        {
            var errors = new StringWriter();
            int code = await XenDiskServiceHost.RunAsync(new ServeOptions
            {
                Simulation = new SimulatedServicePlatform(),
                UseEnvironment = false,
                ConfigPath = malformed,
                ConfigPathExplicit = true,
            }, errors, CancellationToken.None);
            Assert.Equal(ServeExitCodes.InvalidConfiguration, code);
            Assert.Contains($"{malformed}: invalid JSON at line 4, position 3", errors.ToString(), StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(malformed);
        }
    }

    internal static string RepositoryRoot()
    {
        for (DirectoryInfo? directory = new(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "XenDisk.sln")))
            {
                return directory.FullName;
            }
        }

        throw new InvalidOperationException("XenDisk.sln not found above " + AppContext.BaseDirectory);
    }
}
