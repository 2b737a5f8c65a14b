using System.Net.Sockets;
using System.Text;
using XenDisk.Service.Systemd;

namespace XenDisk.Service.Tests;

/// <summary>A real AF_UNIX datagram socket plays systemd's part.</summary>
public sealed class SystemdNotifyTests
{
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
            using var cancel = new CancellationTokenSource(timeout);
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
    public async Task Notifications_arrive_as_one_datagram_each(bool abstractName)
    {
        using var systemd = new FakeSystemd(abstractName);
        using var notifier = new SystemdNotifier(systemd.NotifySocket);
        Assert.True(notifier.Notify("READY=1\nSTATUS=serving"));
        Assert.True(notifier.Notify("WATCHDOG=1"));
        Assert.Equal("READY=1\nSTATUS=serving", await systemd.ReceiveAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal("WATCHDOG=1", await systemd.ReceiveAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void A_missing_socket_is_reported_as_false_not_thrown()
    {
        using var notifier = new SystemdNotifier(Path.Combine(Path.GetTempPath(), $"absent-{Guid.NewGuid():N}.sock"));
        Assert.False(notifier.Notify("READY=1"));
    }
}
