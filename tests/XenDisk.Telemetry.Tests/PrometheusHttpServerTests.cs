using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using XenDisk.Telemetry.Prometheus;

namespace XenDisk.Telemetry.Tests;

public sealed class PrometheusHttpServerTests
{
    private static async Task<string> RawRequestAsync(IPEndPoint endPoint, string request)
    {
        using var client = new TcpClient();
        await client.ConnectAsync(endPoint).WaitAsync(TimeSpan.FromSeconds(10));
        NetworkStream stream = client.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request)).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return await reader.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task Serves_the_scrape_on_its_path_with_the_text_format_content_type()
    {
        await using var server = new PrometheusHttpServer(new Uri("http://127.0.0.1:0/metrics"), () => "up 1\n"u8.ToArray(), NullLogger.Instance);
        server.Start();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        HttpResponseMessage response = await http.GetAsync(server.Url);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/plain; version=0.0.4; charset=utf-8", response.Content.Headers.ContentType!.ToString());
        Assert.Equal("up 1\n", await response.Content.ReadAsStringAsync());
    }

    [Theory]
    [InlineData("GET /other HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404")]
    [InlineData("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405")]
    [InlineData("GARBAGE\r\n\r\n", "HTTP/1.1 400")]
    [InlineData("GET /metrics?x=1 HTTP/1.0\r\n\r\n", "HTTP/1.1 200")]
    public async Task Answers_other_requests_with_the_right_status(string request, string expectedStatusLine)
    {
        await using var server = new PrometheusHttpServer(new Uri("http://127.0.0.1:0/metrics"), () => "up 1\n"u8.ToArray(), NullLogger.Instance);
        server.Start();
        string answer = await RawRequestAsync(server.LocalEndPoint!, request);
        Assert.StartsWith(expectedStatusLine, answer, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Head_gets_headers_only()
    {
        await using var server = new PrometheusHttpServer(new Uri("http://127.0.0.1:0/metrics"), () => "up 1\n"u8.ToArray(), NullLogger.Instance);
        server.Start();
        string answer = await RawRequestAsync(server.LocalEndPoint!, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        Assert.StartsWith("HTTP/1.1 200", answer, StringComparison.Ordinal);
        Assert.Contains("Content-Length: 5\r\n", answer, StringComparison.Ordinal);
        Assert.EndsWith("\r\n\r\n", answer, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_failing_scrape_is_a_500_and_the_server_keeps_serving()
    {
        int calls = 0;
        await using var server = new PrometheusHttpServer(new Uri("http://127.0.0.1:0/metrics"),
            () => Interlocked.Increment(ref calls) == 1 ? throw new InvalidOperationException("boom") : "up 1\n"u8.ToArray(), NullLogger.Instance);
        server.Start();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        Assert.Equal(HttpStatusCode.InternalServerError, (await http.GetAsync(server.Url)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(server.Url)).StatusCode);
    }

    [Fact]
    public async Task An_oversized_request_head_is_refused()
    {
        await using var server = new PrometheusHttpServer(new Uri("http://127.0.0.1:0/metrics"), () => "up 1\n"u8.ToArray(), NullLogger.Instance);
        server.Start();
        string answer = await RawRequestAsync(server.LocalEndPoint!, "GET /metrics HTTP/1.1\r\nX-Big: " + new string('a', 20_000) + "\r\n\r\n");
        Assert.StartsWith("HTTP/1.1 400", answer, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("https://127.0.0.1:9464/metrics")]
    [InlineData("http://metrics.example.org:9464/metrics")]
    [InlineData("http://127.0.0.1:9464/metrics?x=1")]
    [InlineData("ftp://127.0.0.1/metrics")]
    public void Unservable_listen_addresses_are_explained(string address)
    {
        Assert.False(PrometheusHttpServer.TryParseListenAddress(new Uri(address), out _, out _, out string? problem));
        Assert.False(string.IsNullOrEmpty(problem));
    }
}
