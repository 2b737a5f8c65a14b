using Tmds.Linux;

namespace XenDisk.Xen.Native.Tests;

/// <summary><see cref="NativeXenStore"/> through the real libxenstore, against <see cref="FakeXenStoreDaemon"/>.</summary>
[Collection(NativeEnvironmentCollection.Name)]
public sealed class NativeXenStoreTests : IDisposable
{
    private static readonly TimeSpan WatchWait = TimeSpan.FromSeconds(20);

    private readonly FakeXenStoreDaemon _daemon = new();
    private readonly IDisposable _environment;
    private readonly NativeXenStore _store;

    public NativeXenStoreTests()
    {
        _environment = _daemon.UseForXsOpen();
        _store = NativeXenStore.Open();
    }

    public void Dispose()
    {
        _store.Dispose();
        _environment.Dispose();
        _daemon.Dispose();
    }

    [Fact]
    public void Write_then_read_round_trips_the_value()
    {
        _store.Write(XenStoreTransaction.None, "/local/domain/0/backend/vbd/3/51712/params", "qcow2:/srv/äöü.qcow2");
        _store.Write(XenStoreTransaction.None, "/local/domain/0/backend/vbd/3/51712/empty", "");

        Assert.Equal("qcow2:/srv/äöü.qcow2", _daemon.GetNode("/local/domain/0/backend/vbd/3/51712/params"));
        Assert.Equal("qcow2:/srv/äöü.qcow2", _store.Read(XenStoreTransaction.None, "/local/domain/0/backend/vbd/3/51712/params"));
        Assert.Equal("", _store.Read(XenStoreTransaction.None, "/local/domain/0/backend/vbd/3/51712/empty"));
    }

    [Fact]
    public void Missing_node_reads_and_lists_as_null()
    {
        Assert.Null(_store.Read(XenStoreTransaction.None, "/local/domain/9/nothing"));
        Assert.Null(_store.Directory(XenStoreTransaction.None, "/local/domain/9/nothing"));
        Assert.Null(_store.GetPermissions(XenStoreTransaction.None, "/local/domain/9/nothing"));
    }

    [Fact]
    public void Directory_lists_child_names()
    {
        _daemon.SetNode("/backend/vbd/3/51712/state", "1");
        _daemon.SetNode("/backend/vbd/3/51728/state", "1");
        _daemon.SetNode("/backend/vbd/5/51712/state", "1");
        _store.Mkdir(XenStoreTransaction.None, "/backend/vbd/3/empty");

        Assert.Equal(["51712", "51728", "empty"], _store.Directory(XenStoreTransaction.None, "/backend/vbd/3"));
        Assert.Equal([], _store.Directory(XenStoreTransaction.None, "/backend/vbd/3/empty"));
    }

    [Fact]
    public void Remove_deletes_the_subtree_and_a_missing_node_is_not_an_error()
    {
        _daemon.SetNode("/backend/vbd/3/51712/state", "4");
        _daemon.SetNode("/backend/vbd/3/51712/sectors", "2048");

        _store.Remove(XenStoreTransaction.None, "/backend/vbd/3/51712");
        _store.Remove(XenStoreTransaction.None, "/backend/vbd/3/51712");
        _store.Remove(XenStoreTransaction.None, "/no/such/parent/node");

        Assert.Null(_store.Read(XenStoreTransaction.None, "/backend/vbd/3/51712/state"));
        Assert.Null(_daemon.GetNode("/backend/vbd/3/51712/sectors"));
    }

    [Fact]
    public void Permissions_go_out_in_xenstore_text_form_and_come_back_parsed()
    {
        _daemon.SetNode("/local/domain/3/device/vbd/51712/state", "1");
        XenStorePermission[] permissions = [new(3, XenStoreAccess.None), new(0, XenStoreAccess.Read), new(7, XenStoreAccess.Both), new(5, XenStoreAccess.Write)];

        _store.SetPermissions(XenStoreTransaction.None, "/local/domain/3/device/vbd/51712/state", permissions);

        Assert.Equal(["n3", "r0", "b7", "w5"], _daemon.LastSetPermissions);
        Assert.Equal(permissions, _store.GetPermissions(XenStoreTransaction.None, "/local/domain/3/device/vbd/51712/state"));
    }

    [Fact]
    public void A_conflicting_commit_returns_false_and_an_abort_returns_true()
    {
        _daemon.ConflictingCommits = 1;

        XenStoreTransaction first = _store.BeginTransaction();
        _store.Write(first, "/backend/vbd/3/51712/state", "2");
        bool firstCommitted = _store.EndTransaction(first);
        XenStoreTransaction second = _store.BeginTransaction();
        bool secondCommitted = _store.EndTransaction(second);
        XenStoreTransaction third = _store.BeginTransaction();
        bool thirdAborted = _store.EndTransaction(third, abort: true);

        Assert.NotEqual(XenStoreTransaction.None, first);
        Assert.False(firstCommitted);
        Assert.True(secondCommitted);
        Assert.True(thirdAborted);
        Assert.Equal([(first.Id, "T"), (second.Id, "T"), (third.Id, "F")], _daemon.TransactionEnds);
    }

    [Fact]
    public void A_refused_write_throws_naming_the_call_the_path_and_the_errno()
    {
        _daemon.DeniedPaths.Add("/local/domain/5/device/vbd/51712/state");

        XenStoreException error = Assert.Throws<XenStoreException>(() => _store.Write(XenStoreTransaction.None, "/local/domain/5/device/vbd/51712/state", "6"));

        Assert.Equal("xs_write", error.Operation);
        Assert.Equal("/local/domain/5/device/vbd/51712/state", error.Path);
        Assert.Equal(LibC.EACCES, error.Errno);
        Assert.Contains("EACCES", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Unwatching_an_unknown_watch_throws_naming_xs_unwatch()
    {
        XenStoreException error = Assert.Throws<XenStoreException>(() => _store.Unwatch("/backend/vbd", "never-registered"));

        Assert.Equal("xs_unwatch", error.Operation);
        Assert.Equal(LibC.ENOENT, error.Errno);
    }

    [Fact]
    public async Task Watch_fires_on_registration_and_on_each_change_below_the_path()
    {
        using var timeout = new CancellationTokenSource(WatchWait);

        _store.Watch("/local/domain/0/backend/vbd", "backend");
        XenStoreWatchEvent registered = await _store.ReadWatchAsync(timeout.Token);
        _store.Write(XenStoreTransaction.None, "/local/domain/0/backend/vbd/3/51712/state", "1");
        _store.Write(XenStoreTransaction.None, "/local/domain/0/elsewhere", "x");
        _store.Remove(XenStoreTransaction.None, "/local/domain/0/backend/vbd/3");
        XenStoreWatchEvent written = await _store.ReadWatchAsync(timeout.Token);
        XenStoreWatchEvent removed = await _store.ReadWatchAsync(timeout.Token);
        _store.Unwatch("/local/domain/0/backend/vbd", "backend");

        Assert.Equal(new XenStoreWatchEvent("/local/domain/0/backend/vbd", "backend"), registered);
        Assert.Equal(new XenStoreWatchEvent("/local/domain/0/backend/vbd/3/51712/state", "backend"), written);
        Assert.Equal(new XenStoreWatchEvent("/local/domain/0/backend/vbd/3", "backend"), removed);
    }

    [Fact]
    public async Task Reading_watches_after_dispose_fails_instead_of_hanging()
    {
        using var timeout = new CancellationTokenSource(WatchWait);
        ValueTask<XenStoreWatchEvent> pending = _store.ReadWatchAsync(timeout.Token);

        _store.Dispose();

        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await pending);
    }

    [Fact]
    public async Task A_lost_connection_fails_the_watch_reader_with_the_call_named()
    {
        using var timeout = new CancellationTokenSource(WatchWait);
        _store.Watch("/backend", "t");
        Assert.Equal("t", (await _store.ReadWatchAsync(timeout.Token)).Token);

        _daemon.DisconnectAll();

        XenStoreException error = await Assert.ThrowsAsync<XenStoreException>(async () => await _store.ReadWatchAsync(timeout.Token));
        Assert.Equal("xs_check_watch", error.Operation);
    }

    [Fact]
    public void Domain_path_comes_from_xenstored()
    {
        Assert.Equal("/local/domain/5", _store.GetDomainPath(5));
    }

    [Fact]
    public void Platform_reads_the_local_domain_id_from_the_relative_domid_key()
    {
        Assert.Equal(0u, NativeXenPlatform.Open().LocalDomainId);

        _daemon.SetNode("/local/domain/0/domid", "7");
        NativeXenPlatform platform = NativeXenPlatform.Open();

        Assert.Equal(7u, platform.LocalDomainId);
        Assert.Equal("xen (native, domain 7)", platform.Description);
    }

    [Theory]
    [InlineData("seven")]
    [InlineData("-1")]
    [InlineData("32752")]
    [InlineData("")]
    public void Platform_refuses_a_domid_key_that_is_not_a_domain_id(string value)
    {
        _daemon.SetNode("/local/domain/0/domid", value);

        XenException error = Assert.Throws<XenException>(() => NativeXenPlatform.Open());

        Assert.Equal("xs_read", error.Operation);
        Assert.Contains($"'{value}'", error.Message, StringComparison.Ordinal);
    }
}
