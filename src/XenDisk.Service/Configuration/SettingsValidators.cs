using Microsoft.Extensions.Options;

namespace XenDisk.Service.Configuration;

// Source-generated validators for the single-field rules written as attributes on the settings classes
// (no reflection at start-up). The cross-field rules, and every rule of StorageSettings (all of them
// about lists), are in SettingsRules.cs.

[OptionsValidator]
internal sealed partial class BackendSettingsValidator : IValidateOptions<BackendSettings>;

[OptionsValidator]
internal sealed partial class TelemetrySettingsValidator : IValidateOptions<TelemetrySettings>;

[OptionsValidator]
internal sealed partial class ControlSettingsValidator : IValidateOptions<ControlSettings>;

[OptionsValidator]
internal sealed partial class SimulationSettingsValidator : IValidateOptions<SimulationSettings>;
