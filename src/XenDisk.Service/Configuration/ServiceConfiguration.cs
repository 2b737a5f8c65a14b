using System.Diagnostics.CodeAnalysis;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace XenDisk.Service.Configuration;

/// <summary>
/// Binds the configuration sections to the settings classes with their validators, and validates
/// every section at once so that an operator sees all problems in one go, each on its own line,
/// each naming its key.
/// </summary>
public static partial class ServiceConfiguration
{
    /// <summary>The configuration file `xendisk serve` reads unless --config names another.</summary>
    public const string DefaultConfigPath = "/etc/xendisk/xendisk.json";

    /// <summary>Environment variables XENDISK_Backend__MaxQueues=4 and so on override the file.</summary>
    public const string EnvironmentPrefix = "XENDISK_";

    /// <summary>Top-level sections; "Logging" is Microsoft.Extensions.Logging's own.</summary>
    public static readonly IReadOnlyList<string> Sections =
    [
        BackendSettings.SectionName, StorageSettings.SectionName, TelemetrySettings.SectionName,
        ControlSettings.SectionName, SimulationSettings.SectionName, "Logging",
    ];

    private static readonly Dictionary<string, string> SectionOfType = new(StringComparer.Ordinal)
    {
        [nameof(BackendSettings)] = BackendSettings.SectionName,
        [nameof(StorageSettings)] = StorageSettings.SectionName,
        [nameof(TelemetrySettings)] = TelemetrySettings.SectionName,
        [nameof(PrometheusSettings)] = TelemetrySettings.SectionName + ":Prometheus",
        [nameof(OtlpSettings)] = TelemetrySettings.SectionName + ":Otlp",
        [nameof(ControlSettings)] = ControlSettings.SectionName,
        [nameof(SimulationSettings)] = SimulationSettings.SectionName,
    };

    /// <summary>Registers every settings class, bound to its section, with its validators; validated on start.</summary>
    public static IServiceCollection AddXenDiskSettings(this IServiceCollection services, IConfiguration configuration) =>
        AddXenDiskSettings(services, configuration, UnknownKeysAreErrors);

    private static IServiceCollection AddXenDiskSettings(IServiceCollection services, IConfiguration configuration, Action<BinderOptions> binding)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        var rules = new SettingsRules();
        // Each Bind call names its settings type, so that the configuration-binding source generator
        // produces the binding code (no reflection, safe to trim).
        Add<BackendSettings, BackendSettingsValidator>(services, rules, o => configuration.GetSection(BackendSettings.SectionName).Bind(o, binding));
        Add<StorageSettings>(services, rules, o => configuration.GetSection(StorageSettings.SectionName).Bind(o, binding));
        Add<TelemetrySettings, TelemetrySettingsValidator>(services, rules, o => configuration.GetSection(TelemetrySettings.SectionName).Bind(o, binding));
        Add<ControlSettings, ControlSettingsValidator>(services, rules, o => configuration.GetSection(ControlSettings.SectionName).Bind(o, binding));
        Add<SimulationSettings, SimulationSettingsValidator>(services, null, o => configuration.GetSection(SimulationSettings.SectionName).Bind(o, binding));
        Add<IscsiSettings>(services, rules, o => configuration.GetSection(IscsiSettings.SectionName).Bind(o, binding));
        return services;
    }

    /// <summary>Every problem with the configuration, one sentence each; empty when it is valid. A section
    /// with an unknown key or a value of the wrong type reports that first (it cannot be bound to check the rest).</summary>
    public static IReadOnlyList<string> Validate(IConfiguration configuration)
    {
        var services = new ServiceCollection();
        services.AddXenDiskSettings(configuration);
        using ServiceProvider provider = services.BuildServiceProvider();
        return Validate(provider, configuration);
    }

    /// <summary>Resolves every settings class from <paramref name="services"/> (binding and validating it).</summary>
    public static IReadOnlyList<string> Validate(IServiceProvider services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        var problems = new List<string>();
        foreach (IConfigurationSection section in configuration.GetChildren())
        {
            if (!Sections.Contains(section.Key, StringComparer.OrdinalIgnoreCase))
            {
                problems.Add($"{section.Key}: unknown configuration section (known: {string.Join(", ", Sections)}).");
            }
        }

        ServiceProvider? lenient = null;
        try
        {
            // A section with unknown keys cannot be bound strictly; it is bound again without them so
            // that its other errors are reported in the same run, not one at a time.
            ServiceProvider Lenient() => lenient ??= AddXenDiskSettings(new ServiceCollection(), configuration, UnknownKeysIgnored).BuildServiceProvider();
            Check<BackendSettings>(services, problems, Lenient);
            Check<StorageSettings>(services, problems, Lenient);
            Check<TelemetrySettings>(services, problems, Lenient);
            Check<ControlSettings>(services, problems, Lenient);
            Check<SimulationSettings>(services, problems, Lenient);
            Check<IscsiSettings>(services, problems, Lenient);
        }
        finally
        {
            lenient?.Dispose();
        }
        return problems;
    }

    /// <summary>Unknown keys are errors: a misspelt key silently ignored is a setting silently not applied.</summary>
    private static void UnknownKeysAreErrors(BinderOptions binder) => binder.ErrorOnUnknownConfiguration = true;

    /// <summary>Binding that skips unknown keys, so that a section with one is still checked for its other errors.</summary>
    private static void UnknownKeysIgnored(BinderOptions binder) => binder.ErrorOnUnknownConfiguration = false;

    private static void Add<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicParameterlessConstructor)] TSettings,
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TValidator>(
        IServiceCollection services, SettingsRules? rules, Action<TSettings> bind)
        where TSettings : class
        where TValidator : class, IValidateOptions<TSettings>
    {
        Add(services, rules, bind);
        services.AddSingleton<IValidateOptions<TSettings>, TValidator>();
    }

    private static void Add<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicParameterlessConstructor)] TSettings>(
        IServiceCollection services, SettingsRules? rules, Action<TSettings> bind)
        where TSettings : class
    {
        services.AddOptions<TSettings>()
            .Configure(bind)
            .ValidateOnStart();
        if (rules is IValidateOptions<TSettings> crossField)
        {
            services.AddSingleton(crossField);
        }
    }

    private static void Check<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicParameterlessConstructor)] TSettings>(IServiceProvider services, List<string> problems, Func<IServiceProvider>? lenient = null)
        where TSettings : class
    {
        try
        {
            _ = services.GetRequiredService<IOptions<TSettings>>().Value;
        }
        catch (OptionsValidationException e)
        {
            problems.AddRange(e.Failures.Select(Readable));
        }
        catch (InvalidOperationException e)
        {
            // The binder's own failures: a value of the wrong type (its message names the key), or unknown keys.
            problems.Add(Readable(e.Message));
            if (lenient != null && UnknownKeys().IsMatch(e.Message))
            {
                Check<TSettings>(lenient(), problems);
            }
        }
    }

    /// <summary>
    /// Rewrites a validator's message so that it starts with the configuration key: the generated
    /// validators say "MaxQueues: The field BackendSettings.MaxQueues must be between 1 and 256.",
    /// which becomes "Backend:MaxQueues must be between 1 and 256."; the binder's unknown-key message
    /// names the type, which becomes its section.
    /// </summary>
    internal static string Readable(string failure)
    {
        Match annotation = GeneratedFailure().Match(failure);
        if (annotation.Success && SectionOfType.TryGetValue(annotation.Groups["type"].Value, out string? owner))
        {
            string key = owner + ":" + annotation.Groups["path"].Value.Replace('.', ':');
            return $"{key} {annotation.Groups["rest"].Value}";
        }

        Match wrapped = DataAnnotationFailure().Match(failure);
        if (wrapped.Success)
        {
            return wrapped.Groups["message"].Value;
        }

        Match unknown = UnknownKeys().Match(failure);
        if (unknown.Success)
        {
            string type = unknown.Groups["type"].Value;
            string section = SectionOfType.TryGetValue(type[(type.LastIndexOf('.') + 1)..], out string? name) ? name : type;
            return $"{section}: unknown key(s) {unknown.Groups["keys"].Value}; check the spelling against docs/OPERATIONS.md.";
        }

        return failure;
    }

    [GeneratedRegex(@"^[\w.]+: The (?:field )?(?<type>\w+)\.(?<path>[\w.]+) (?:field )?(?<rest>.+)$", RegexOptions.Singleline)]
    private static partial Regex GeneratedFailure();

    [GeneratedRegex(@"^DataAnnotation validation failed for '[^']*' members: '[^']*' with the error: '(?<message>.*)'\.$", RegexOptions.Singleline)]
    private static partial Regex DataAnnotationFailure();

    [GeneratedRegex(@"properties were not found on the instance of (?<type>[\w.+]+): (?<keys>.*)$", RegexOptions.Singleline)]
    private static partial Regex UnknownKeys();
}
