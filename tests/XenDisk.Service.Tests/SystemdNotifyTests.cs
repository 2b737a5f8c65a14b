using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Hosting.Systemd;
using XenDisk.Service.Systemd;
using XenDisk.Service.Tests.Support;

namespace XenDisk.Service.Tests;

/// <summary>A real AF_UNIX datagram socket plays systemd's part; the notifier is the hosting package's.</summary>
[Collection(ProcessWideCollection.Name)]
public sealed class SystemdNotifyTests
{
    /// <summary>Sets an environment variable for the life of the object, then restores it.</summary>
    internal sealed class EnvironmentVariable : IDisposable
    {
        private readonly string _name;
        private readonly string? _previous;

        public EnvironmentVariable(string name, string? value)
        {
            _name = name;
            _previous = Environment.GetEnvironmentVariable(name);
            Environment.SetEnvironmentVariable(name, value);
        }

        public void Dispose() => Environment.SetEnvironmentVariable(_name, _previous);
    }

    internal sealed class FakeSystemd : IDisposable
    {
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        private readonly string? _file;

        /// <param name="abstractName">Bind in the abstract namespace (NOTIFY_SOCKET=@name) instead of a file.</param>
        public FakeSystemd(bool abstractName = false)
        {
            string name = $"xendisk-test-{Guid.NewGuid():N}";
            if (abstractName)
            {
                NotifySocket = "@" + name;
                _socket.Bind(new UnixDomainSocketEndPoint("\0" + name));
            }
            else
            {
                _file = Path.Combine(Path.GetTempPath(), name + ".sock");
                NotifySocket = _file;
                _socket.Bind(new UnixDomainSocketEndPoint(_file));
            }
        }

        public string NotifySocket { get; }

        /// <summary>The next datagram, or a failed test after <paramref name="timeout"/>.</summary>
        public async Task<string> ReceiveAsync(TimeSpan timeout)
        {
            var buffer = new byte[4096];
            using var cancel = new CancellationTokenSource(timeout);
            try
            {
                int length = await _socket.ReceiveAsync(buffer, SocketFlags.None, cancel.Token);
                return Encoding.UTF8.GetString(buffer, 0, length);
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"No notification arrived within {timeout.TotalSeconds} s.");
                throw;
            }
        }

        /// <summary>Datagrams until one contains <paramref name="assignment"/>; all of them, in order.</summary>
        public async Task<List<string>> ReceiveUntilAsync(string assignment, TimeSpan timeout)
        {
            var received = new List<string>();
            while (true)
            {
                string datagram = await ReceiveAsync(timeout);
                received.Add(datagram);
                if (datagram.Split('\n').Contains(assignment))
                {
                    return received;
                }
            }
        }

        public void Dispose()
        {
            _socket.Dispose();
            if (_file is not null)
            {
                File.Delete(_file);
            }
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task The_package_notifier_reaches_NOTIFY_SOCKET_as_a_path_or_an_abstract_name(bool abstractName)
    {
        using var systemd = new FakeSystemd(abstractName);
        using var variable = new EnvironmentVariable("NOTIFY_SOCKET", systemd.NotifySocket);
        var notifier = new SystemdNotifier();
        Assert.True(notifier.IsEnabled);
        notifier.Notify(ServiceState.Ready);
        notifier.Notify(new ServiceState("WATCHDOG=1"));
        Assert.Equal("READY=1", await systemd.ReceiveAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal("WATCHDOG=1", await systemd.ReceiveAsync(TimeSpan.FromSeconds(10)));
    }

    [Theory]
    [InlineData("/run/systemd/notify", null, null, true, null)]
    [InlineData("@/org/freedesktop/systemd1/notify/123", "30000000", null, true, 30.0)]
    [InlineData(null, "30000000", null, false, 30.0)]
    [InlineData("relative/socket", null, null, false, null)]
    [InlineData("/run/systemd/notify", "30000000", "1", true, null)]
    [InlineData("/run/systemd/notify", "not a number", null, true, null)]
    [InlineData("/run/systemd/notify", "0", null, true, null)]
    public void Settings_follow_NOTIFY_SOCKET_WATCHDOG_USEC_and_WATCHDOG_PID(string? socket, string? usec, string? pid, bool notify, double? watchdogSeconds)
    {
        using var a = new EnvironmentVariable("NOTIFY_SOCKET", socket);
        using var b = new EnvironmentVariable("WATCHDOG_USEC", usec);
        // WATCHDOG_PID "1" names another process (init), so the watchdog is not ours to pet.
        using var c = new EnvironmentVariable("WATCHDOG_PID", pid);
        SystemdSettings settings = SystemdSettings.FromEnvironment();
        Assert.Equal(notify, settings.Notify);
        Assert.Equal(watchdogSeconds, settings.WatchdogTimeout?.TotalSeconds);
    }

    [Fact]
    public void Our_own_WATCHDOG_PID_enables_the_watchdog()
    {
        using var b = new EnvironmentVariable("WATCHDOG_USEC", "2000000");
        using var c = new EnvironmentVariable("WATCHDOG_PID", Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        Assert.Equal(TimeSpan.FromSeconds(2), SystemdSettings.WatchdogTimeoutFromEnvironment());
    }
}
