using System.Diagnostics.Metrics;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using XenDisk.Backend.ControlPlane;
using XenDisk.Cow.Provider;
using XenDisk.Service.Configuration;
using XenDisk.Service.Control;
using XenDisk.Service.Maintenance;
using XenDisk.Service.Storage;
using XenDisk.Service.Systemd;
using XenDisk.Service.Telemetry;
using XenDisk.Storage;
using XenDisk.Telemetry;
using XenDisk.Telemetry.Collection;
using XenDisk.Xen;
using XenDisk.Xen.Native;

namespace XenDisk.Service.Hosting;

/// <summary>What `xendisk serve` was asked on its command line.</summary>
public sealed record ServeOptions
{
    /// <summary>The JSON configuration file; a missing file is an error only when it was named explicitly.</summary>
    public string ConfigPath { get; init; } = ServiceConfiguration.DefaultConfigPath;

    public bool ConfigPathExplicit { get; init; }

    /// <summary>Run on this platform (the simulated hypervisor with demo guests) instead of native Xen.</summary>
    public IServicePlatform? Simulation { get; init; }

    public bool Simulate => Simulation is not null;

    /// <summary>--hotplug-script: overrides Backend:HotplugScript.</summary>
    public string? HotplugScript { get; init; }

    /// <summary>--kind: added to Backend:Kinds.</summary>
    public IReadOnlyList<string> ExtraKinds { get; init; } = [];

    /// <summary>Log Information and above (otherwise the configuration's Logging section decides, Information by default).</summary>
    public LogLevel? MinimumLogLevel { get; init; }

    /// <summary>Configuration applied after the file and the environment (tests, embedding).</summary>
    public IReadOnlyDictionary<string, string?>? ConfigurationOverrides { get; init; }

    /// <summary>Last word on the services (tests; the copy-on-write provider's registration).</summary>
    public Action<IServiceCollection>? ConfigureServices { get; init; }

    /// <summary>Read environment variables (XENDISK_*, NOTIFY_SOCKET, WATCHDOG_USEC). Tests turn it off.</summary>
    public bool UseEnvironment { get; init; } = true;

    /// <summary>Whether systemd listens and its watchdog interval, instead of what the environment says
    /// (tests). The notifications still go to $NOTIFY_SOCKET: that is where systemd's notifier sends them.</summary>
    public SystemdSettings? Systemd { get; init; }
}

/// <summary>Process exit codes of `xendisk serve` (sysexits.h values where one fits).</summary>
public static class ServeExitCodes
{
    public const int Success = 0;

    /// <summary>Start-up failed (the message says why).</summary>
    public const int Failure = 1;

    /// <summary>EX_UNAVAILABLE: this machine cannot run the native backend (not a Xen dom0 or driver domain, or not root).</summary>
    public const int XenUnavailable = 69;

    /// <summary>EX_CONFIG: the configuration is invalid; restarting will not help (the unit's RestartPreventExitStatus).</summary>
    public const int InvalidConfiguration = 78;
}

/// <summary>
/// The service host: configuration, validation, the platform (native Xen or simulated), and the hosted
/// services in start order: telemetry, backend, simulated guests (with --simulate), control socket,
/// systemd notification. They stop in reverse order: systemd hears STOPPING first, the control socket
/// closes, the guests detach, the backend drains, and telemetry exports its last counts.
/// </summary>
public static class XenDiskServiceHost
{
    /// <summary>The configuration `serve` reads: the JSON file, XENDISK_* environment variables, then overrides.</summary>
    public static IConfigurationRoot BuildConfiguration(ServeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = new ConfigurationBuilder();
        builder.AddJsonFile(Path.GetFullPath(options.ConfigPath), optional: !options.ConfigPathExplicit, reloadOnChange: false);
        if (options.UseEnvironment)
        {
            builder.AddEnvironmentVariables(ServiceConfiguration.EnvironmentPrefix);
        }

        if (options.ConfigurationOverrides is not null)
        {
            builder.AddInMemoryCollection(options.ConfigurationOverrides);
        }

        return builder.Build();
    }

    /// <summary>
    /// Builds the host. <paramref name="platform"/> is the native platform (already probed and opened)
    /// or null with <see cref="ServeOptions.Simulate"/>.
    /// </summary>
    public static IHost Build(ServeOptions options, IConfigurationRoot configuration, IXenPlatform? platform)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(configuration);
        if (platform is null && !options.Simulate)
        {
            throw new ArgumentException("A native platform is required unless simulating.", nameof(platform));
        }

        HostApplicationBuilder builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
        {
            // No appsettings.json from the working directory, no DOTNET_ variables, no command-line
            // configuration: the configuration is exactly what BuildConfiguration read.
            DisableDefaults = true,
            ApplicationName = "xendisk",
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Configuration.AddConfiguration(configuration);
        IServiceCollection services = builder.Services;

        SystemdSettings systemd = options.Systemd ?? (options.UseEnvironment ? SystemdSettings.FromEnvironment() : SystemdSettings.None);
        builder.Logging.AddConfiguration(configuration.GetSection("Logging"));
        if (systemd.Notify || Environment.GetEnvironmentVariable("JOURNAL_STREAM") is not null)
        {
            // The journal reads each line's syslog priority from its "<N>" prefix (sd-daemon(3)) and
            // adds its own timestamps.
            builder.Logging.AddSystemdConsole(console => console.TimestampFormat = null);
        }
        else
        {
            builder.Logging.AddSimpleConsole(console =>
            {
                console.SingleLine = true;
                console.TimestampFormat = "HH:mm:ss.fff ";
            });
        }

        // The lifetimes' "Application started" lines repeat what our own start-up lines say.
        builder.Logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
        builder.Logging.SetMinimumLevel(options.MinimumLogLevel ?? LogLevel.Information);
        services.Configure<ConsoleLifetimeOptions>(o => o.SuppressStatusMessages = true);
        services.Configure<HostOptions>(o =>
        {
            // Long enough for every ring to drain (Backend:RingDrainTimeoutSeconds) and telemetry to export once more.
            int drain = configuration.GetValue<int?>("Backend:RingDrainTimeoutSeconds") ?? (int)BackendOptions.DefaultRingDrainTimeout.TotalSeconds;
            o.ShutdownTimeout = TimeSpan.FromSeconds(Math.Clamp(drain, 1, 3600) + 15);
        });

        services.AddXenDiskSettings(configuration);
        AddCommandLineOverrides(services, options);

        services.AddMetrics();
        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton(systemd);
        // READY=1 and STOPPING=1 from the package's SystemdLifetime. AddSystemd (UseSystemd) installs it
        // only when our parent process is systemd; $NOTIFY_SOCKET is what systemd actually hands a
        // Type=notify service (and what the tests provide), so that decides here.
        services.AddSystemd();
        if (systemd.Notify)
        {
            services.TryAddSingleton<ISystemdNotifier, SystemdNotifier>();
            services.AddSingleton<IHostLifetime, SystemdLifetime>();
        }

        if (options.Simulation is { } simulation)
        {
            simulation.AddPlatform(services, configuration);
        }
        else
        {
            services.AddSingleton(platform!);
            services.AddSingleton(sp => ImageDirectoryPolicy.From(sp.GetRequiredService<IOptions<StorageSettings>>().Value));
        }

        // The one registration that decides how disk targets are opened: raw, qcow2 and cow targets.
        // Status and metrics read its open overlays; a provider put in IDiskProvider's place by
        // ConfigureServices opens no copy-on-write image they could see, and this one then has none open.
        services.AddSingleton(sp => new ImageDiskProvider(sp.GetRequiredService<ImageDirectoryPolicy>(),
            new CowProviderOptions
            {
                Logger = sp.GetRequiredService<ILoggerFactory>().CreateLogger("XenDisk.Cow"),
                // iSCSI LUNs only when the Iscsi section enables them, with its initiator name and CHAP credentials.
                RawProvider = new RawDiskProvider(new RawDiskProviderOptions { Iscsi = sp.GetRequiredService<IOptions<IscsiSettings>>().Value.ToOptions() }),
            }));
        services.AddSingleton<IDiskProvider>(sp => sp.GetRequiredService<ImageDiskProvider>());

        services.AddSingleton(sp =>
        {
            BackendOptions backendOptions = sp.GetRequiredService<IOptions<BackendSettings>>().Value.ToBackendOptions(sp.GetRequiredService<TimeProvider>());
            if (options.Simulate)
            {
                // Simulated guests live and die with this process: there is no later instance to resume them.
                backendOptions = backendOptions with { InflightDirectory = null };
            }

            ILoggerFactory loggers = sp.GetRequiredService<ILoggerFactory>();
            return new BlockBackend(sp.GetRequiredService<IXenPlatform>(), sp.GetRequiredService<IDiskProvider>(), backendOptions, loggers);
        });
        services.AddSingleton(sp => new ServiceIdentity(
            ServiceIdentity.AssemblyVersion,
            sp.GetRequiredService<IXenPlatform>().Description,
            options.Simulate,
            sp.GetRequiredService<TimeProvider>().GetUtcNow()));
        services.AddSingleton<IDeviceStatusSource>(sp => new BlockBackendStatusSource(sp.GetRequiredService<BlockBackend>()));
        services.AddSingleton(sp => new BackendStatisticsCollector(sp.GetRequiredService<IDeviceStatusSource>(), sp.GetRequiredService<TimeProvider>()));
        services.AddSingleton(sp =>
        {
            var metrics = new XenDiskMetrics(sp.GetRequiredService<IMeterFactory>(), sp.GetRequiredService<BackendStatisticsCollector>());
            metrics.RegisterCopyOnWrite(new CopyOnWriteMetricsSource(sp.GetRequiredService<ImageDiskProvider>().GetOpenOverlays));
            return metrics;
        });
        services.AddSingleton<HydrationManager>();
        services.AddSingleton<DeviceResizer>();
        services.AddSingleton<StatusReporter>();
        services.AddSingleton<ServiceStatusText>();

        // Start order (stop order is the reverse).
        services.AddXenDiskTelemetry(configuration);
        services.AddHostedService<BackendService>();
        options.Simulation?.AddWorkload(services);

        services.AddSingleton<ControlServer>();
        services.AddHostedService(sp => sp.GetRequiredService<ControlServer>());
        if (systemd.Notify)
        {
            services.AddHostedService<SystemdNotifyService>();
        }

        options.ConfigureServices?.Invoke(services);
        return builder.Build();
    }

    /// <summary>
    /// What went wrong reading the file: the configuration provider wraps a JSON syntax error in
    /// exceptions that say only which file failed; the line and the position within it (both counted
    /// from 1, as editors count) come from the JSON reader's exception inside.
    /// </summary>
    private static string DescribeReadError(Exception error)
    {
        for (Exception? inner = error; inner != null; inner = inner.InnerException)
        {
            if (inner is System.Text.Json.JsonException { LineNumber: long line } json)
            {
                string position = json.BytePositionInLine is long column ? $", position {column + 1}" : "";
                string reason = json.Message.Split(" Path:", 2)[0].Split(" LineNumber:", 2)[0].TrimEnd('.', ' ');
                return $"invalid JSON at line {line + 1}{position}: {reason}";
            }
        }
        return error.InnerException is { } cause ? $"{error.Message} ({cause.Message})" : error.Message;
    }

    /// <summary>
    /// `xendisk serve`: validates the configuration, checks the platform, runs until
    /// <paramref name="cancellationToken"/> is cancelled or the host is stopped (SIGTERM), and returns
    /// the exit code. Problems are written to <paramref name="errors"/>, one per line; nothing throws.
    /// </summary>
    public static async Task<int> RunAsync(ServeOptions options, TextWriter errors, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(errors);
        IConfigurationRoot configuration;
        try
        {
            configuration = BuildConfiguration(options);
        }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException or FormatException or IOException or UnauthorizedAccessException)
        {
            await errors.WriteLineAsync($"xendisk: cannot read the configuration {options.ConfigPath}: {DescribeReadError(e)}").ConfigureAwait(false);
            return ServeExitCodes.InvalidConfiguration;
        }

        IReadOnlyList<string> problems = ValidateWithCommandLine(options, configuration);
        if (problems.Count > 0)
        {
            await errors.WriteLineAsync($"xendisk: the configuration is invalid ({options.ConfigPath}, XENDISK_* variables):").ConfigureAwait(false);
            foreach (string problem in problems)
            {
                await errors.WriteLineAsync("  " + problem).ConfigureAwait(false);
            }

            return ServeExitCodes.InvalidConfiguration;
        }

        IXenPlatform? platform = null;
        if (!options.Simulate)
        {
            XenProbeResult probe = XenEnvironment.Probe();
            if (!probe.IsUsable)
            {
                await errors.WriteLineAsync("xendisk: this machine cannot run the Xen backend (use --simulate to run on the simulated hypervisor):").ConfigureAwait(false);
                foreach (string problem in probe.Problems)
                {
                    await errors.WriteLineAsync("  " + problem).ConfigureAwait(false);
                }

                return ServeExitCodes.XenUnavailable;
            }

            try
            {
                platform = NativeXenPlatform.Open();
            }
            catch (XenException e)
            {
                await errors.WriteLineAsync($"xendisk: cannot open Xen: {e.Message}").ConfigureAwait(false);
                return ServeExitCodes.XenUnavailable;
            }
        }

        IHost host;
        try
        {
            host = Build(options, configuration, platform);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            await errors.WriteLineAsync($"xendisk: {e.Message}").ConfigureAwait(false);
            return ServeExitCodes.Failure;
        }

        using (host)
        {
            ILogger logger = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("XenDisk.Service");
            string platformName = host.Services.GetRequiredService<IXenPlatform>().Description;
            // A missing file is an error only when --config named it; otherwise say that defaults apply
            // rather than name a file that was never read.
            if (File.Exists(options.ConfigPath))
            {
                ServiceLog.Starting(logger, ServiceIdentity.AssemblyVersion, platformName, Path.GetFullPath(options.ConfigPath));
            }
            else
            {
                ServiceLog.StartingWithDefaults(logger, ServiceIdentity.AssemblyVersion, platformName, options.ConfigPath);
            }
            try
            {
                await host.StartAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                await StopQuietlyAsync(host).ConfigureAwait(false);
                return ServeExitCodes.Success;
            }
            catch (Exception e)
            {
                await errors.WriteLineAsync($"xendisk: start-up failed: {Describe(e)}").ConfigureAwait(false);
                await StopQuietlyAsync(host).ConfigureAwait(false);
                return ServeExitCodes.Failure;
            }

            try
            {
                await host.WaitForShutdownAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // WaitForShutdownAsync stops the host when the token fires; nothing else to do.
            }

            return ServeExitCodes.Success;
        }
    }

    /// <summary>Configuration problems including the command line's contributions (--hotplug-script, --kind).</summary>
    public static IReadOnlyList<string> ValidateWithCommandLine(ServeOptions options, IConfiguration configuration)
    {
        var services = new ServiceCollection();
        services.AddXenDiskSettings(configuration);
        AddCommandLineOverrides(services, options);
        using ServiceProvider provider = services.BuildServiceProvider();
        return ServiceConfiguration.Validate(provider, configuration);
    }

    /// <summary>--hotplug-script replaces Backend:HotplugScript; --kind adds to Backend:Kinds. Validated with the rest.</summary>
    private static void AddCommandLineOverrides(IServiceCollection services, ServeOptions options) =>
        services.PostConfigure<BackendSettings>(settings =>
        {
            if (options.HotplugScript is not null)
            {
                settings.HotplugScript = options.HotplugScript;
            }

            if (options.ExtraKinds.Count > 0)
            {
                settings.Kinds = [.. settings.EffectiveKinds.Concat(options.ExtraKinds).Distinct(StringComparer.Ordinal)];
            }
        });

    private static async Task StopQuietlyAsync(IHost host)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await host.StopAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or AggregateException or InvalidOperationException)
        {
            // Start-up already failed and was reported; a failing stop adds nothing an operator can act on.
        }
    }

    private static string Describe(Exception e) => e switch
    {
        AggregateException { InnerExceptions.Count: > 0 } aggregate => string.Join("; ", aggregate.InnerExceptions.Select(Describe)),
        OptionsValidationException validation => string.Join("; ", validation.Failures.Select(ServiceConfiguration.Readable)),
        _ => e.Message,
    };
}
