namespace XenDisk.Xen.Native.Tests;

public sealed class XenEnvironmentTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("xendisk-probe-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void Probe_of_this_machine_names_each_missing_device_in_plain_words()
    {
        XenProbeResult result = XenEnvironment.Probe();

        foreach ((string device, string module) in new[] { ("/dev/xen/gntdev", "xen-gntdev"), ("/dev/xen/evtchn", "xen-evtchn"), ("/dev/xen/privcmd", "xen-privcmd") })
        {
            string expected = $"device node {device} is missing: this is not a Xen dom0 or driver domain, or the {module} module is not loaded";
            if (File.Exists(device))
            {
                Assert.DoesNotContain(result.Problems, p => p.StartsWith(expected, StringComparison.Ordinal));
            }
            else
            {
                Assert.Contains(result.Problems, p => p.StartsWith(expected, StringComparison.Ordinal));
                Assert.False(result.IsUsable);
            }
        }

        // The libraries are installed on every machine that runs these tests.
        Assert.DoesNotContain(result.Problems, p => p.StartsWith("library ", StringComparison.Ordinal));
    }

    [Fact]
    public void Probe_of_an_empty_root_reports_every_device_and_xenstore()
    {
        XenProbeResult result = XenEnvironment.Probe(XenPaths.Under(_root));

        Assert.Equal(4, result.Problems.Count);
        Assert.Contains(result.Problems, p => p.StartsWith($"device node {_root}/dev/xen/gntdev is missing: ", StringComparison.Ordinal) && p.Contains("xen-gntdev", StringComparison.Ordinal));
        Assert.Contains(result.Problems, p => p.StartsWith($"device node {_root}/dev/xen/evtchn is missing: ", StringComparison.Ordinal) && p.Contains("xen-evtchn", StringComparison.Ordinal));
        Assert.Contains(result.Problems, p => p.StartsWith($"device node {_root}/dev/xen/privcmd is missing: ", StringComparison.Ordinal) && p.Contains("xen-privcmd", StringComparison.Ordinal));
        Assert.Contains(result.Problems, p => p.StartsWith("xenstore is not reachable: none of ", StringComparison.Ordinal) && p.Contains($"{_root}/dev/xen/xenbus", StringComparison.Ordinal));
        Assert.False(result.IsUsable);
        Assert.Equal(string.Join(Environment.NewLine, result.Problems), result.ToString());
    }

    [Fact]
    public void Probe_finds_nothing_missing_when_every_path_is_present()
    {
        Directory.CreateDirectory(Path.Combine(_root, "dev/xen"));
        foreach (string name in new[] { "gntdev", "evtchn", "privcmd", "xenbus" })
        {
            File.WriteAllBytes(Path.Combine(_root, "dev/xen", name), []);
        }

        XenProbeResult result = XenEnvironment.Probe(XenPaths.Under(_root));

        Assert.Empty(result.Problems);
        Assert.True(result.IsUsable);
    }

    [Fact]
    public void Probe_reports_xenstore_through_either_path()
    {
        Directory.CreateDirectory(Path.Combine(_root, "run/xenstored"));
        File.WriteAllBytes(Path.Combine(_root, "run/xenstored/socket"), []);

        XenProbeResult result = XenEnvironment.Probe(XenPaths.Under(_root));

        Assert.DoesNotContain(result.Problems, p => p.StartsWith("xenstore", StringComparison.Ordinal));
        Assert.Equal(3, result.Problems.Count);
    }
}
