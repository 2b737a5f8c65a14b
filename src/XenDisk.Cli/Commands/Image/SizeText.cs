using System.Globalization;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// Sizes and offsets written the way qemu-img and qemu-io take them: bytes ("65536"), hex bytes
/// ("0x10000"), or a number with a binary suffix k/M/G/T/P/E in either case ("64k", "1.5G", "10G").
/// "b" or "B" means bytes. Fractions are allowed when the result is a whole number of bytes.
/// </summary>
internal static class SizeText
{
    public static bool TryParse(string? text, out long bytes, out string error)
    {
        bytes = 0;
        error = "";
        string value = text?.Trim() ?? "";
        if (value.Length == 0)
        {
            error = "an empty size";
            return false;
        }
        if (value.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            if (long.TryParse(value.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out bytes) && bytes >= 0)
            {
                return true;
            }
            error = $"'{value}' is not a hexadecimal byte count";
            return false;
        }
        int shift = 0;
        char last = char.ToLowerInvariant(value[^1]);
        if (!char.IsAsciiDigit(last))
        {
            shift = last switch
            {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => -1,
            };
            if (shift < 0)
            {
                error = $"'{value}' has an unknown suffix '{value[^1]}' (use k, M, G, T, P or E)";
                return false;
            }
            value = value[..^1];
        }
        if (value.Length == 0 || !value.All(c => char.IsAsciiDigit(c) || c == '.')
            || !decimal.TryParse(value, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out decimal number))
        {
            error = $"'{text!.Trim()}' is not a size (bytes, or a number with a k/M/G/T/P/E suffix)";
            return false;
        }
        decimal scaled;
        try
        {
            scaled = number * (1L << shift);
        }
        catch (OverflowException)
        {
            error = $"'{text!.Trim()}' is too large";
            return false;
        }
        if (scaled > long.MaxValue)
        {
            error = $"'{text!.Trim()}' is too large";
            return false;
        }
        if (scaled != decimal.Truncate(scaled))
        {
            error = $"'{text!.Trim()}' is not a whole number of bytes";
            return false;
        }
        bytes = (long)scaled;
        return true;
    }

    /// <summary>"64 MiB", "1.5 GiB", "512 B": the largest binary unit that leaves a number of at least 1.</summary>
    public static string Format(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        double value = bytes;
        int unit = 0;
        while (Math.Abs(value) >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes} B")
            : string.Create(CultureInfo.InvariantCulture, $"{value:0.###} {units[unit]}");
    }
}
