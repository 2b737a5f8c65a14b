using System.Diagnostics.CodeAnalysis;
using System.Net;

namespace XenDisk.Service.Telemetry;

/// <summary>
/// Telemetry:Prometheus:ListenAddress taken apart for the exporter's HttpListener: an absolute http URL
/// whose host is an IP address or "localhost", an explicit port and a path, nothing else.
/// </summary>
internal sealed record PrometheusListenAddress(string Host, int Port, string Path)
{
    public static bool TryParse(string? text, [NotNullWhen(true)] out PrometheusListenAddress? address, out string? problem)
    {
        address = null;
        problem = null;
        if (!Uri.TryCreate(text, UriKind.Absolute, out Uri? uri) || uri.Scheme != Uri.UriSchemeHttp)
        {
            problem = "must be an absolute http:// URL such as http://127.0.0.1:9464/metrics (https is not served)";
            return false;
        }

        if (!string.IsNullOrEmpty(uri.Query) || !string.IsNullOrEmpty(uri.Fragment) || !string.IsNullOrEmpty(uri.UserInfo))
        {
            problem = "must not carry user information, a query or a fragment";
            return false;
        }

        if (!string.Equals(uri.Host, "localhost", StringComparison.OrdinalIgnoreCase) && !IPAddress.TryParse(uri.Host.Trim('[', ']'), out _))
        {
            problem = $"host \"{uri.Host}\" must be an IP address (or localhost): the listener binds one address, it does not resolve names";
            return false;
        }

        // HttpListener cannot pick a free port for itself.
        if (uri.Port == 0)
        {
            problem = "must name a port (0 is not accepted)";
            return false;
        }

        address = new PrometheusListenAddress(uri.Host, uri.Port, uri.AbsolutePath);
        return true;
    }
}
