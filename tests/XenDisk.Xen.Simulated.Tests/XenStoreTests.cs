using XenDisk.Xen;
using XenDisk.Xen.Simulated;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated.Tests;

public sealed class XenStoreTests : IDisposable
{
    private static readonly XenStoreTransaction None = XenStoreTransaction.None;
    private readonly SimulatedHypervisor _hypervisor = new();
    private readonly SimulatedDomain _guest;
    private readonly SimulatedXenStore _dom0;
    private readonly SimulatedXenStore _domU;

    public XenStoreTests()
    {
        _guest = _hypervisor.CreateDomain("guest");
        _dom0 = _hypervisor.OpenXenStore(_hypervisor.Dom0);
        _domU = _hypervisor.OpenXenStore(_guest);
    }

    public void Dispose()
    {
        _dom0.Dispose();
        _domU.Dispose();
        _hypervisor.Dispose();
    }

    [Fact]
    public void Write_creates_parents_and_read_returns_null_for_missing()
    {
        _dom0.Write(None, "/a/b/c", "value");
        Assert.Equal("value", _dom0.Read(None, "/a/b/c"));
        Assert.Equal("", _dom0.Read(None, "/a/b"));
        Assert.Equal(["b"], _dom0.Directory(None, "/a"));
        Assert.Null(_dom0.Read(None, "/a/b/missing"));
        Assert.Null(_dom0.Directory(None, "/nowhere"));

        _dom0.Remove(None, "/a");
        Assert.Null(_dom0.Read(None, "/a/b/c"));
        _dom0.Remove(None, "/a");
    }

    [Theory]
    [InlineData("/a//b")]
    [InlineData("/a/")]
    [InlineData("/a b")]
    [InlineData("/a/b.c")]
    public void Malformed_paths_are_EINVAL(string path)
    {
        Assert.Equal(LibC.EINVAL, Assert.Throws<XenStoreException>(() => _dom0.Write(None, path, "x")).Errno);
    }

    [Fact]
    public void Relative_paths_are_below_the_domain_home()
    {
        _domU.Write(None, "data/key", "v");
        Assert.Equal("v", _dom0.Read(None, $"/local/domain/{_guest.Id}/data/key"));
        Assert.Equal($"/local/domain/{_guest.Id}", _domU.GetDomainPath(_guest.Id));
    }

    [Fact]
    public void DomU_gets_EACCES_outside_what_it_may_touch()
    {
        _dom0.Write(None, "/local/domain/0/secret", "x");
        Assert.Equal(LibC.EACCES, Assert.Throws<XenStoreException>(() => _domU.Read(None, "/local/domain/0/secret")).Errno);
        Assert.Equal(LibC.EACCES, Assert.Throws<XenStoreException>(() => _domU.Write(None, "/local/domain/0/secret", "y")).Errno);
        Assert.Equal(LibC.EACCES, Assert.Throws<XenStoreException>(() => _domU.Write(None, "/local/domain/0/new", "y")).Errno);
        Assert.Equal(LibC.EACCES, Assert.Throws<XenStoreException>(() => _domU.Remove(None, "/local/domain/0/secret")).Errno);

        // Its own home is readable but not writable; device/ is its own.
        Assert.Equal("guest", _domU.Read(None, $"/local/domain/{_guest.Id}/name"));
        Assert.Throws<XenStoreException>(() => _domU.Write(None, $"/local/domain/{_guest.Id}/name", "evil"));
        _domU.Write(None, $"/local/domain/{_guest.Id}/device/x", "1");

        // A missing node below something unreadable is EACCES, not "missing".
        Assert.Equal(LibC.EACCES, Assert.Throws<XenStoreException>(() => _domU.Read(None, "/local/domain/0/missing")).Errno);
    }

    [Fact]
    public void Permissions_follow_the_first_entry_and_listed_domains()
    {
        SimulatedDomain other = _hypervisor.CreateDomain("other");
        using SimulatedXenStore otherStore = _hypervisor.OpenXenStore(other);
        _dom0.Write(None, "/shared/node", "x");
        _dom0.SetPermissions(None, "/shared/node", [new(0, XenStoreAccess.None), new(_guest.Id, XenStoreAccess.Read)]);

        Assert.Equal("x", _domU.Read(None, "/shared/node"));
        Assert.Throws<XenStoreException>(() => _domU.Write(None, "/shared/node", "y"));
        Assert.Throws<XenStoreException>(() => otherStore.Read(None, "/shared/node"));
        Assert.Equal([new(0, XenStoreAccess.None), new(_guest.Id, XenStoreAccess.Read)], _dom0.GetPermissions(None, "/shared/node"));

        // Children inherit; a domU cannot give its nodes away.
        _dom0.Write(None, "/shared/node/child", "c");
        Assert.Equal("c", _domU.Read(None, "/shared/node/child"));
        string mine = $"/local/domain/{_guest.Id}/device/mine";
        _domU.Write(None, mine, "1");
        Assert.Equal(_guest.Id, _domU.GetPermissions(None, mine)![0].DomainId);
        Assert.Equal(LibC.EPERM, Assert.Throws<XenStoreException>(() => _domU.SetPermissions(None, mine, [new(other.Id, XenStoreAccess.None)])).Errno);
    }

    [Fact]
    public async Task Watch_fires_on_registration_and_on_every_change_at_or_below()
    {
        _dom0.Watch("/dev/x", "tok");
        Assert.Equal(new XenStoreWatchEvent("/dev/x", "tok"), await _dom0.ReadWatchAsync(CancellationToken.None));

        _dom0.Write(None, "/dev/x", "1");
        _dom0.Write(None, "/dev/x", "1");
        _dom0.Write(None, "/dev/x/deep/key", "2");
        _dom0.Mkdir(None, "/dev/x/dir");
        _dom0.Write(None, "/dev/y", "sideways");
        _dom0.Write(None, "/dev", "above");
        _dom0.Write(None, "/dev/xy", "prefix but not below");
        _dom0.Remove(None, "/dev/x/deep");

        string[] expected = ["/dev/x", "/dev/x", "/dev/x/deep/key", "/dev/x/dir", "/dev/x/deep"];
        foreach (string path in expected)
        {
            Assert.Equal(new XenStoreWatchEvent(path, "tok"), await _dom0.ReadWatchAsync(CancellationToken.None));
        }

        Assert.False(_dom0.TryReadWatch(out _));
    }

    [Fact]
    public async Task Removing_a_parent_fires_watches_below_it()
    {
        _dom0.Write(None, "/p/q/r", "1");
        _dom0.Watch("/p/q/r", "below");
        await _dom0.ReadWatchAsync(CancellationToken.None);

        _dom0.Remove(None, "/p");
        Assert.Equal(new XenStoreWatchEvent("/p/q/r", "below"), await _dom0.ReadWatchAsync(CancellationToken.None));
    }

    [Fact]
    public void Watches_do_not_report_nodes_the_watcher_cannot_read()
    {
        _domU.Watch("/local/domain/0", "t");
        Assert.True(_domU.TryReadWatch(out _));
        _dom0.Write(None, "/local/domain/0/private", "x");
        Assert.False(_domU.TryReadWatch(out _));
    }

    [Fact]
    public void Unwatch_stops_events_and_duplicates_are_EEXIST()
    {
        _dom0.Watch("/w", "t");
        Assert.Equal(LibC.EEXIST, Assert.Throws<XenStoreException>(() => _dom0.Watch("/w", "t")).Errno);
        _dom0.Unwatch("/w", "t");
        while (_dom0.TryReadWatch(out _))
        {
        }

        _dom0.Write(None, "/w", "1");
        Assert.False(_dom0.TryReadWatch(out _));
    }

    [Fact]
    public void Special_watches_fire_on_domain_creation_and_destruction()
    {
        _dom0.Watch("@introduceDomain", "in");
        _dom0.Watch("@releaseDomain", "out");
        Assert.True(_dom0.TryReadWatch(out XenStoreWatchEvent first));
        Assert.Equal("@introduceDomain", first.Path);
        Assert.True(_dom0.TryReadWatch(out _));

        SimulatedDomain created = _hypervisor.CreateDomain("new");
        Assert.True(_dom0.TryReadWatch(out XenStoreWatchEvent introduced));
        Assert.Equal(new XenStoreWatchEvent("@introduceDomain", "in"), introduced);

        _hypervisor.DestroyDomain(created);
        Assert.Null(_dom0.Read(None, created.XenStorePath));
        List<XenStoreWatchEvent> events = [];
        while (_dom0.TryReadWatch(out XenStoreWatchEvent e))
        {
            events.Add(e);
        }

        Assert.Contains(new XenStoreWatchEvent("@releaseDomain", "out"), events);
    }

    [Fact]
    public void Transaction_sees_its_own_writes_and_commits_atomically_with_events_at_commit()
    {
        _dom0.Watch("/t", "w");
        Assert.True(_dom0.TryReadWatch(out _));

        XenStoreTransaction t = _dom0.BeginTransaction();
        _dom0.Write(t, "/t/a", "1");
        _dom0.Write(t, "/t/b", "2");
        Assert.Equal("1", _dom0.Read(t, "/t/a"));
        Assert.Null(_dom0.Read(None, "/t/a"));
        Assert.False(_dom0.TryReadWatch(out _));

        Assert.True(_dom0.EndTransaction(t));
        Assert.Equal("2", _dom0.Read(None, "/t/b"));
        Assert.True(_dom0.TryReadWatch(out XenStoreWatchEvent first));
        Assert.Equal("/t/a", first.Path);
    }

    [Fact]
    public void Conflicting_transaction_fails_with_nothing_applied_and_a_retry_succeeds()
    {
        using SimulatedXenStore other = _hypervisor.OpenXenStore(_hypervisor.Dom0);
        _dom0.Write(None, "/c/state", "1");

        XenStoreTransaction t = _dom0.BeginTransaction();
        Assert.Equal("1", _dom0.Read(t, "/c/state"));
        _dom0.Write(t, "/c/other", "x");
        other.Write(None, "/c/state", "2");
        Assert.False(_dom0.EndTransaction(t));
        Assert.Null(_dom0.Read(None, "/c/other"));

        t = _dom0.BeginTransaction();
        Assert.Equal("2", _dom0.Read(t, "/c/state"));
        _dom0.Write(t, "/c/other", "x");
        Assert.True(_dom0.EndTransaction(t));
        Assert.Equal("x", _dom0.Read(None, "/c/other"));
    }

    [Fact]
    public void Unrelated_writes_do_not_conflict_and_abort_discards()
    {
        XenStoreTransaction t = _dom0.BeginTransaction();
        _dom0.Write(t, "/u/mine", "1");
        _domU.Write(None, $"/local/domain/{_guest.Id}/data/elsewhere", "x");
        Assert.True(_dom0.EndTransaction(t));

        t = _dom0.BeginTransaction();
        _dom0.Write(t, "/u/aborted", "1");
        Assert.True(_dom0.EndTransaction(t, abort: true));
        Assert.Null(_dom0.Read(None, "/u/aborted"));
    }

    [Fact]
    public void Forced_conflict_hook_fails_the_next_commit()
    {
        _hypervisor.ForceXenStoreConflicts(1);
        XenStoreTransaction t = _dom0.BeginTransaction();
        _dom0.Write(t, "/f", "1");
        Assert.False(_dom0.EndTransaction(t));
        Assert.Null(_dom0.Read(None, "/f"));
    }

    [Fact]
    public void Unknown_transaction_is_ENOENT()
    {
        Assert.Equal(LibC.ENOENT, Assert.Throws<XenStoreException>(() => _dom0.Read(new XenStoreTransaction(4242), "/x")).Errno);
        XenStoreTransaction t = _dom0.BeginTransaction();
        Assert.Throws<XenStoreException>(() => _domU.Read(t, "/x"));
        _dom0.EndTransaction(t, abort: true);
    }

    [Fact]
    public async Task ReadWatchAsync_throws_after_dispose()
    {
        SimulatedXenStore connection = _hypervisor.OpenXenStore(_guest);
        connection.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await connection.ReadWatchAsync(CancellationToken.None));
    }
}
