using XenDisk.Cli.Tests.Support;
using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Cli.Tests;

/// <summary>`xendisk io` and `xendisk image` on iSCSI LUNs served by a real tgtd.</summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed class IscsiCliTests : IDisposable
{
    private const string Iqn = "iqn.2026-12.org.xendisk.test:cli";
    private const long Size = 8L << 20;

    /// <summary>A golden disk half a LUN's size, so that a bitmap overlay of it (header, map, data area) fits on one LUN.</summary>
    private const long GoldenSize = 4L << 20;

    private readonly TempDirectory _work = new("xendisk-cli-iscsi-");

    public void Dispose() => _work.Dispose();

    /// <summary>tgtd with LUN 1, 2, ... of the given sizes (one LUN of <see cref="Size"/> by default).</summary>
    private TgtdTarget Start(params long[] sizes)
    {
        List<TgtdLun> all = [];
        sizes = sizes.Length == 0 ? [Size] : sizes;
        for (int i = 1; i <= sizes.Length; i++)
        {
            string lun = LunFile(i);
            using (FileStream file = File.Create(lun))
            {
                file.SetLength(sizes[i - 1]);
            }
            all.Add(new TgtdLun(i, lun));
        }
        return TgtdTarget.Start(Path.Combine(_work.Path, "tgtd"), new TgtdTargetDefinition(Iqn, all));
    }

    private string LunFile(int lun) => Path.Combine(_work.Path, $"lun{lun}.img");

    private string WorkFile(string name) => Path.Combine(_work.Path, name);

    private static void AssertOk(CliResult result) => Assert.True(result.ExitCode == 0, result.ToString());

    private static void AssertQemu(ProcessResult result) => Assert.True(result.ExitCode == 0, result.ToString());

    /// <summary>A golden image file of <see cref="GoldenSize"/> written by qemu-io: 0x5a over the first MiB, 0xa5 over 2 MiB..3 MiB, zeros elsewhere.</summary>
    private string Golden()
    {
        string golden = WorkFile("golden.img");
        AssertQemu(QemuTools.Run("qemu-img", "create", "-f", "raw", golden, GoldenSize.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        AssertQemu(QemuTools.Run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 2M 1M", golden));
        return golden;
    }

    [TgtdFact]
    public void Info_shows_a_luns_size_from_read_capacity()
    {
        using TgtdTarget target = Start();
        string url = target.Url(Iqn, 1);
        CliResult text = Xendisk.Run("image", "info", url);
        AssertOk(text);
        Assert.Contains($"image: {url}", text.Output, StringComparison.Ordinal);
        Assert.Contains("file format: raw", text.Output, StringComparison.Ordinal);
        Assert.Contains($"virtual size: 8 MiB ({Size} bytes)", text.Output, StringComparison.Ordinal);

        CliResult json = Xendisk.Run("image", "info", "--json", url);
        AssertOk(json);
        Assert.Contains($"\"virtualSize\": {Size}", json.Output, StringComparison.Ordinal);
    }

    [TgtdFact]
    public void Io_reads_and_writes_a_lun_named_by_url()
    {
        using TgtdTarget target = Start();
        string url = target.Url(Iqn, 1);
        CliResult wrote = Xendisk.Run("io", url, "-c", "write -P 0xab 64k 64k", "-c", "flush", "-c", "read -P 0xab 64k 64k", "-c", "read -P 0 0 64k");
        Assert.True(wrote.ExitCode == 0, wrote.Error);
        byte[] file = File.ReadAllBytes(Path.Combine(_work.Path, "lun1.img"));
        Assert.All(file.AsSpan(64 << 10, 64 << 10).ToArray(), b => Assert.Equal(0xab, b));
        CliResult wrong = Xendisk.Run("io", url, "-c", "read -P 0xcd 64k 4k");
        Assert.NotEqual(0, wrong.ExitCode);
        Xendisk.AssertNoStackTrace(wrong);
    }

    [TgtdFact]
    public void A_bad_url_or_a_missing_lun_is_one_clear_line()
    {
        using TgtdTarget target = Start();
        CliResult bad = Xendisk.Run("io", $"iscsi://{target.Portal}/{Iqn}", "-c", "read 0 4k");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("the LUN is missing", bad.Error, StringComparison.Ordinal);
        CliResult missing = Xendisk.Run("io", target.Url(Iqn, 9), "-c", "read 0 4k");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("has no LUN 9", missing.Error, StringComparison.Ordinal);
        Xendisk.AssertNoStackTrace(missing);
    }

    [TgtdFact]
    public void Unlock_shows_and_with_force_breaks_a_dead_hosts_reservation()
    {
        using TgtdTarget target = Start();
        string url = target.Url(Iqn, 1);
        using IscsiBlockDevice stale = IscsiBlockDevice.Open(IscsiUrl.Parse(url), readOnly: false, new IscsiOptions { ReservationKey = 0x5eed });
        CliResult refused = Xendisk.Run("io", url, "-c", "write -P 1 0 4k");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("reserved by another host (host key 0x0000000000005eed)", refused.Error, StringComparison.Ordinal);

        CliResult shown = Xendisk.Run("image", "unlock", url);
        Assert.Equal(0, shown.ExitCode);
        Assert.Contains("reserved by host key 0x0000000000005eed", shown.Output, StringComparison.Ordinal);

        CliResult broken = Xendisk.Run("image", "unlock", "--force", url);
        Assert.True(broken.ExitCode == 0, broken.Error);
        Assert.Contains("broke the reservation of host key 0x0000000000005eed", broken.Output, StringComparison.Ordinal);

        CliResult wrote = Xendisk.Run("io", url, "-c", "write -P 2 0 4k", "-c", "read -P 2 0 4k");
        Assert.True(wrote.ExitCode == 0, wrote.Error);
        // The tool reserved the LUN only while it wrote, and released it on exit.
        Assert.Null(IscsiBlockDevice.ReadReservation(IscsiUrl.Parse(url), new IscsiOptions()));
    }

    [TgtdFact]
    public void A_bitmap_overlay_created_on_a_lun_over_a_golden_file_is_checked_mapped_and_written()
    {
        string golden = Golden();
        byte[] goldenBefore = File.ReadAllBytes(golden);
        using TgtdTarget target = Start();
        string url = target.Url(Iqn, 1);
        // Whatever the LUN held before must not be read as a map.
        File.WriteAllBytes(LunFile(1), Enumerable.Repeat((byte)0xff, (int)Size).ToArray());

        CliResult created = Xendisk.Run("image", "create", "-f", "bitmap", "-b", golden, "-F", "raw", "-o", "grain=4k", url);
        AssertOk(created);
        Assert.Contains($"Formatting '{url}', fmt=bitmap size={GoldenSize}", created.Output, StringComparison.Ordinal);

        CliResult info = Xendisk.Run("image", "info", url);
        AssertOk(info);
        Assert.Contains("file format: bitmap", info.Output, StringComparison.Ordinal);
        Assert.Contains($"backing file: {golden}", info.Output, StringComparison.Ordinal);
        Assert.Contains($"file size: 8 MiB ({Size} bytes)", info.Output, StringComparison.Ordinal);
        Assert.Contains("allocated: 0 B", info.Output, StringComparison.Ordinal);

        AssertOk(Xendisk.Run("io", url, "-c", "write -P 0x77 64k 8k", "-c", "flush", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0x77 64k 8k", "-c", "read -P 0x5a 72k 8k"));

        CliResult check = Xendisk.Run("image", "check", url);
        Assert.True(check.ExitCode == ImageCheckExitClean, check.ToString());
        Assert.Contains("No errors were found on the image.", check.Output, StringComparison.Ordinal);

        CliResult map = Xendisk.Run("image", "map", "--json", url);
        AssertOk(map);
        Assert.Contains("\"offset\": 65536,\n    \"length\": 8192,\n    \"kind\": \"data\"", map.Output, StringComparison.Ordinal);
        Assert.Contains("\"kind\": \"base\"", map.Output, StringComparison.Ordinal);

        // Creating over it again is refused: an overlay is never overwritten.
        CliResult again = Xendisk.Run("image", "create", "-f", "bitmap", "-b", golden, "-F", "raw", url);
        Assert.NotEqual(0, again.ExitCode);
        Assert.Contains("already holds a bitmap overlay", again.Error, StringComparison.Ordinal);
        // The way the refusal names: clear the first block as raw, and the LUN takes a new overlay.
        AssertOk(Xendisk.Run("io", "-f", "raw", url, "-c", "write -z 0 4k"));
        AssertOk(Xendisk.Run("image", "create", "-f", "bitmap", "-b", golden, "-F", "raw", url));
        CliResult fresh = Xendisk.Run("image", "info", url);
        AssertOk(fresh);
        Assert.Contains("allocated: 0 B", fresh.Output, StringComparison.Ordinal);
        Assert.Equal(goldenBefore, File.ReadAllBytes(golden));
    }

    [TgtdFact]
    public void A_bitmap_overlay_on_one_lun_over_a_golden_lun_converts_to_what_qemu_reads()
    {
        string golden = Golden();
        using TgtdTarget target = Start(GoldenSize, Size);
        string goldenUrl = target.Url(Iqn, 1);
        string overlayUrl = target.Url(Iqn, 2);
        File.Copy(golden, LunFile(1), overwrite: true);

        AssertOk(Xendisk.Run("image", "create", "-f", "bitmap", "-b", goldenUrl, overlayUrl));
        CliResult info = Xendisk.Run("image", "info", "--backing-chain", overlayUrl);
        AssertOk(info);
        Assert.Contains($"backing file: {goldenUrl}", info.Output, StringComparison.Ordinal);
        Assert.Contains($"image: {goldenUrl}\nfile format: raw\nvirtual size: 4 MiB ({GoldenSize} bytes)", info.Output, StringComparison.Ordinal);

        AssertOk(Xendisk.Run("io", overlayUrl, "-c", "write -P 0x33 1M 128k", "-c", "write -z 2M 64k"));
        // The overlay's disk, converted to a file and to a qcow2 image, is what qemu-io wrote plus the overlay's writes.
        string raw = WorkFile("out.raw");
        string qcow2 = WorkFile("out.qcow2");
        AssertOk(Xendisk.Run("image", "convert", overlayUrl, raw));
        AssertOk(Xendisk.Run("image", "convert", "-O", "qcow2", overlayUrl, qcow2));
        string expected = WorkFile("expected.img");
        File.Copy(golden, expected);
        AssertQemu(QemuTools.Run("qemu-io", "-f", "raw", "-c", "write -P 0x33 1M 128k", "-c", "write -z 2M 64k", expected));
        AssertQemu(QemuTools.Run("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, raw));
        AssertQemu(QemuTools.Run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", expected, qcow2));
        AssertQemu(QemuTools.Run("qemu-img", "check", qcow2));
        Assert.Equal(File.ReadAllBytes(golden), File.ReadAllBytes(LunFile(1)));
    }

    [TgtdFact]
    public void Convert_writes_a_qemu_image_onto_a_lun_zeros_included_and_measure_agrees_with_qemu()
    {
        string golden = Golden();
        string source = WorkFile("source.qcow2");
        AssertQemu(QemuTools.Run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", golden, source));
        using TgtdTarget target = Start();
        string url = target.Url(Iqn, 1);
        File.WriteAllBytes(LunFile(1), Enumerable.Repeat((byte)0xee, (int)Size).ToArray());

        AssertOk(Xendisk.Run("image", "convert", "-f", "qcow2", source, url));
        // Every byte, the zero blocks too: the LUN's old 0xee is gone; past the source's end the LUN is as it was.
        byte[] lun = File.ReadAllBytes(LunFile(1));
        Assert.Equal(File.ReadAllBytes(golden), lun[..(int)GoldenSize]);
        Assert.All(lun[(int)GoldenSize..], b => Assert.Equal(0xee, b));

        // measure counts the blocks holding data, as qemu-img measure does on a sparse file of the same
        // contents (qemu-img convert leaves the zero blocks of the LUN's file as holes).
        string sparse = WorkFile("sparse.img");
        AssertQemu(QemuTools.Run("qemu-img", "convert", "-f", "raw", "-O", "raw", LunFile(1), sparse));
        foreach (string format in new[] { "raw", "qcow2" })
        {
            CliResult measured = Xendisk.Run("image", "measure", "--json", "-O", format, url);
            AssertOk(measured);
            ProcessResult qemu = QemuTools.Run("qemu-img", "measure", "--output=json", "-f", "raw", "-O", format, sparse);
            AssertQemu(qemu);
            Assert.Equal(Numbers(qemu.Output, "required"), Numbers(measured.Output, "required"));
            Assert.Equal(Numbers(qemu.Output, "fully-allocated"), Numbers(measured.Output, "fully-allocated"));
        }

        CliResult qcow2Target = Xendisk.Run("image", "convert", "-O", "qcow2", source, url);
        Assert.Equal(2, qcow2Target.ExitCode);
        Assert.Contains("a LUN is a raw target", qcow2Target.Error, StringComparison.Ordinal);
        CliResult qcow2Lun = Xendisk.Run("image", "create", "-f", "qcow2", url, "4M");
        Assert.NotEqual(0, qcow2Lun.ExitCode);
        Assert.Contains("qcow2 images live in files", qcow2Lun.Error, StringComparison.Ordinal);
        string big = WorkFile("big.img");
        AssertQemu(QemuTools.Run("qemu-img", "create", "-f", "raw", big, "16M"));
        CliResult tooBig = Xendisk.Run("image", "convert", big, url);
        Assert.NotEqual(0, tooBig.ExitCode);
        Assert.Contains($"holds {Size} bytes, less than the source's {16L << 20}", tooBig.Error, StringComparison.Ordinal);
        Xendisk.AssertNoStackTrace(tooBig);
    }

    [TgtdFact]
    public void A_qcow2_file_over_a_golden_lun_is_created_described_and_read()
    {
        string golden = Golden();
        using TgtdTarget target = Start(GoldenSize);
        string url = target.Url(Iqn, 1);
        File.Copy(golden, LunFile(1), overwrite: true);
        string overlay = WorkFile("vm.qcow2");

        AssertOk(Xendisk.Run("image", "create", "-f", "qcow2", "-b", url, "-F", "raw", overlay));
        ProcessResult qemuInfo = QemuTools.Run("qemu-img", "info", "--output=json", overlay);
        AssertQemu(qemuInfo);
        Assert.Contains($"\"backing-filename\": \"{url}\"", qemuInfo.Output, StringComparison.Ordinal);
        Assert.Contains($"\"virtual-size\": {GoldenSize}", qemuInfo.Output, StringComparison.Ordinal);
        CliResult chain = Xendisk.Run("image", "info", "--backing-chain", overlay);
        AssertOk(chain);
        Assert.Contains($"image: {url}\nfile format: raw", chain.Output, StringComparison.Ordinal);
        AssertOk(Xendisk.Run("io", overlay, "-c", "read -P 0x5a 0 1M", "-c", "read -P 0xa5 2M 1M", "-c", "read -P 0 1M 1M"));
    }

    private const int ImageCheckExitClean = 0;

    private static long Numbers(string json, string name)
    {
        using System.Text.Json.JsonDocument document = System.Text.Json.JsonDocument.Parse(json);
        return document.RootElement.GetProperty(name).GetInt64();
    }
}
