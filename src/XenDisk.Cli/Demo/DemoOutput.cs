using static System.FormattableString;
using System.Text.Json;

namespace XenDisk.Cli.Demo;

/// <summary>Prints a <see cref="DemoReport"/> for people (a table per guest) or for scripts (JSON).</summary>
internal static class DemoOutput
{
    public static void WriteJson(TextWriter output, DemoReport report) =>
        output.WriteLine(JsonSerializer.Serialize(report, CliJsonContext.Default.DemoReport));

    public static void WriteText(TextWriter output, DemoReport report)
    {
        foreach (var g in report.Guests)
        {
            var n = g.Negotiated;
            var w = g.Workload;
            output.WriteLine(Invariant($"{g.Name} (domain {g.DomainId}) on {g.Disk}"));
            string indirect = n.IndirectSegments > 0 ? Invariant($"indirect {n.IndirectSegments} segments") : "no indirect";
            string persistent = n.PersistentGrants ? "persistent grants" : "no persistent grants";
            output.WriteLine(Invariant($"  negotiated: {n.Protocol}, {n.Queues} queue(s), ring {1 << n.RingPageOrder} page(s) x {n.RingEntries} slots, {indirect}, {persistent}, flush {(n.FlushCache ? "yes" : "no")}, discard {(n.Discard ? "yes" : "no")}, {n.Sectors * 512 / (1024 * 1024)} MiB, {n.SectorSize}-byte sectors"));
            output.WriteLine(Invariant($"  {w.Requests} requests in {w.Seconds:F1} s: {w.Iops:F0} IOPS, read {w.ReadMiBps:F1} MiB/s, write {w.WriteMiBps:F1} MiB/s"));
            output.WriteLine(Invariant($"  verified {w.BytesVerified / (1024.0 * 1024):F1} MiB read back, {w.Mismatches} mismatches, {w.Errors} errors"));
            output.WriteLine("  latency (us)     requests      p50      p90      p99    p99.9      max");
            foreach (var op in w.Operations.Where(o => o.Requests > 0))
            {
                output.WriteLine(Invariant($"    {op.Operation,-10} {op.Requests,12} {op.P50Us,8:F0} {op.P90Us,8:F0} {op.P99Us,8:F0} {op.P999Us,8:F0} {op.MaxUs,8:F0}"));
            }

            output.WriteLine(Invariant($"  backend: {g.BackendNotificationsSent} notifications sent, {g.BackendNotificationsSuppressed} suppressed, {g.PersistentGrantHits} persistent-grant hits"));
            output.WriteLine(Invariant($"  detach: backend closed {(g.Disconnect.BackendReachedClosed ? "yes" : "NO")}, ring grants still mapped {g.Disconnect.RingGrantsStillMapped}, data grants still mapped {g.Disconnect.DataGrantsStillMapped}"));
            output.WriteLine();
        }

        output.WriteLine(Invariant($"golden base {report.GoldenBase}: {(report.GoldenBaseUnchanged ? "unchanged" : "CHANGED")}; qcow2 overlay check: {report.Qcow2OverlayCheck}"));
        output.WriteLine(Invariant($"grant mappings left after detach: {report.GrantMappingsLeftAfterDetach}"));
        output.WriteLine(report.Passed ? "PASS: every byte read back as written or as the shared base, no errors, base untouched, nothing left mapped" : "FAIL: see above");
    }
}
