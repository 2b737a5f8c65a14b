using System.Runtime.InteropServices;

namespace XenDisk.Storage.Tests.Support;

/// <summary>
/// Page-aligned native memory carved into <see cref="IoBuffer"/>s, the way the data plane hands the
/// device mapped grant pages. Each buffer starts on its own page plus a chosen misalignment.
/// </summary>
public sealed unsafe class NativeBuffers : IDisposable
{
    private const int Page = 4096;
    private readonly byte* _memory;
    private readonly nuint _size;

    public NativeBuffers(IReadOnlyList<int> lengths, int misalignment = 0)
    {
        int stride = 0;
        foreach (int length in lengths)
        {
            stride = Math.Max(stride, length + misalignment);
        }
        Stride = (stride + Page - 1) / Page * Page + Page;
        _size = (nuint)(Stride * Math.Max(lengths.Count, 1));
        _memory = (byte*)NativeMemory.AlignedAlloc(_size, Page);
        NativeMemory.Clear(_memory, _size);
        Buffers = new IoBuffer[lengths.Count];
        for (int i = 0; i < lengths.Count; i++)
        {
            Buffers[i] = new IoBuffer((nint)(_memory + (long)i * Stride + misalignment), lengths[i]);
        }
    }

    public int Stride { get; }

    public IoBuffer[] Buffers { get; }

    public long TotalLength => Buffers.Sum(b => (long)b.Length);

    /// <summary>Fills the buffers, in order, from <paramref name="data"/>.</summary>
    public void Fill(ReadOnlySpan<byte> data)
    {
        foreach (IoBuffer buffer in Buffers)
        {
            data[..buffer.Length].CopyTo(buffer.AsSpan());
            data = data[buffer.Length..];
        }
    }

    /// <summary>The buffers' contents concatenated.</summary>
    public byte[] Concatenate()
    {
        var result = new byte[TotalLength];
        int at = 0;
        foreach (IoBuffer buffer in Buffers)
        {
            buffer.AsSpan().CopyTo(result.AsSpan(at));
            at += buffer.Length;
        }
        return result;
    }

    public void Dispose() => NativeMemory.AlignedFree(_memory);
}
