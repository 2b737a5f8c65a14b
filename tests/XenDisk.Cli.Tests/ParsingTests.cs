using XenDisk.Cli.Commands;
using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Tests;

public sealed class ParsingTests
{
    [Theory]
    [InlineData("0", 0L)]
    [InlineData("512", 512L)]
    [InlineData("64k", 65536L)]
    [InlineData("64K", 65536L)]
    [InlineData("512M", 512L << 20)]
    [InlineData("10G", 10L << 30)]
    [InlineData("1.5G", 3L << 29)]
    [InlineData("2T", 2L << 40)]
    [InlineData("7E", 7L << 60)]
    [InlineData("4096b", 4096L)]
    [InlineData("0x10000", 65536L)]
    public void Sizes_InQemuSyntax(string text, long expected)
    {
        Assert.True(SizeText.TryParse(text, out long bytes, out string error), error);
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("")]
    [InlineData("k")]
    [InlineData("12Q")]
    [InlineData("-1")]
    [InlineData("1.2.3")]
    [InlineData("0.1k")]
    [InlineData("8E")]
    [InlineData("99999999999999999999")]
    [InlineData("0x")]
    [InlineData("0xfffffffffffffffff")]
    [InlineData("1 G")]
    public void Sizes_Malformed_AreRefused(string text)
    {
        Assert.False(SizeText.TryParse(text, out _, out string error));
        Assert.NotEmpty(error);
    }

    [Theory]
    [InlineData("read 0 4k", "Read", 0L, 4096L, -1)]
    [InlineData("read -P 0xab 1M 64k", "Read", 1L << 20, 65536L, 0xab)]
    [InlineData("write 0 512", "Write", 0L, 512L, 0xcd)]
    [InlineData("write -P 7 4k 4k", "Write", 4096L, 4096L, 7)]
    [InlineData("write -z 0 1G", "Write", 0L, 1L << 30, -1)]
    [InlineData("discard 64k 64k", "Discard", 65536L, 65536L, -1)]
    [InlineData("  flush  ", "Flush", 0L, 0L, -1)]
    public void IoCommands_Parse(string text, string operation, long offset, long length, int pattern)
    {
        Assert.True(IoCommand.TryParseRequest(text, out IoCommand.IoRequest? request, out string error), error);
        Assert.Equal(operation, request!.Operation.ToString());
        Assert.Equal(offset, request.Offset);
        Assert.Equal(length, request.Length);
        Assert.Equal(pattern < 0 ? null : (byte?)pattern, request.Pattern);
    }

    [Theory]
    [InlineData("")]
    [InlineData("reed 0 4k")]
    [InlineData("read")]
    [InlineData("read 0")]
    [InlineData("read 0 4k 8k")]
    [InlineData("read -P")]
    [InlineData("read -P 256 0 4k")]
    [InlineData("read -P zz 0 4k")]
    [InlineData("read -z 0 4k")]
    [InlineData("write -z -P 1 0 4k")]
    [InlineData("discard -P 1 0 4k")]
    [InlineData("flush now")]
    [InlineData("write -q 0 4k")]
    [InlineData("write 0 -4k")]
    public void IoCommands_Malformed_AreRefused(string text)
    {
        Assert.False(IoCommand.TryParseRequest(text, out _, out string error));
        Assert.NotEmpty(error);
    }

    [Theory]
    [InlineData("cluster_size=64k", "cluster_size", "64k")]
    [InlineData("a=1,b=2", "b", "2")]
    public void Create_options_parse(string text, string key, string value)
    {
        Assert.True(ImageCreateCommand.TryParseOptions([text], out Dictionary<string, string> settings, out string error), error);
        Assert.Equal(value, settings[key]);
    }

    [Theory]
    [InlineData("novalue")]
    [InlineData("=x")]
    [InlineData("a=")]
    [InlineData("a=1,a=2")]
    public void Create_options_malformed_are_refused(string text)
    {
        Assert.False(ImageCreateCommand.TryParseOptions([text], out _, out string error));
        Assert.NotEmpty(error);
    }
}
