using System.Runtime.InteropServices;
using XenDisk.Abi;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// Page-aligned pages the grant-copy path copies guest data through. One native allocation per
/// ring, made at start; renting is all-or-nothing so a request either gets every page it needs or
/// waits (back-pressure) without holding any.
/// Ownership: the ring owns the pool and disposes it when its thread ends; a rented page is lent
/// to exactly one request until it is returned.
/// Ring thread only.
/// </summary>
internal sealed unsafe class BounceBufferPool : IDisposable
{
    private readonly int[] _free;
    private byte* _memory;
    private int _freeCount;

    public BounceBufferPool(int pages)
    {
        PageCount = pages;
        _memory = (byte*)NativeMemory.AlignedAlloc((nuint)pages * XenPage.Size, XenPage.Size);
        _free = new int[pages];
        for (int i = 0; i < pages; i++)
        {
            _free[i] = pages - 1 - i;
        }

        _freeCount = pages;
    }

    public int PageCount { get; }

    public int Available => _freeCount;

    public nint AddressOf(int page) => (nint)(_memory + ((nint)page * XenPage.Size));

    /// <summary>The first page's address: the pool is one allocation of <see cref="PageCount"/> pages.</summary>
    public nint BaseAddress => (nint)_memory;

    public nuint ByteLength => (nuint)PageCount * XenPage.Size;

    /// <summary>Rents <c>pages.Length</c> pages, or none when fewer are free.</summary>
    public bool TryRent(Span<int> pages)
    {
        if (pages.Length > _freeCount)
        {
            return false;
        }

        for (int i = 0; i < pages.Length; i++)
        {
            pages[i] = _free[--_freeCount];
        }

        return true;
    }

    public void Return(ReadOnlySpan<int> pages)
    {
        for (int i = 0; i < pages.Length; i++)
        {
            _free[_freeCount++] = pages[i];
        }
    }

    public void Dispose()
    {
        if (_memory != null)
        {
            NativeMemory.AlignedFree(_memory);
            _memory = null;
        }
    }
}
