using XenDisk.Abi;
using XenDisk.Xen.Simulated.Memory;

namespace XenDisk.Xen.Simulated.Grants;

/// <summary>
/// Address ranges whose grant mappings were unmapped while the hypervisor checks teardown: each is
/// covered by private memory filled with <see cref="Canary"/> and never reused, so any byte written
/// there after the unmap stays visible. Thread-safe.
/// </summary>
internal sealed class UnmapQuarantine
{
    public const byte Canary = 0xC5;

    private readonly Lock _lock = new();
    private readonly List<(nint Address, long Length)> _ranges = [];

    public unsafe void Add(nint address, long length)
    {
        AddressRange.Park(address, length);
        new Span<byte>((void*)address, (int)length).Fill(Canary);
        lock (_lock)
        {
            _ranges.Add((address, length));
        }
    }

    public unsafe int CountDamagedPages()
    {
        lock (_lock)
        {
            int damaged = 0;
            foreach ((nint address, long length) in _ranges)
            {
                for (long page = 0; page < length; page += XenPage.Size)
                {
                    if (new ReadOnlySpan<byte>((void*)(address + (nint)page), XenPage.Size).ContainsAnyExcept(Canary))
                    {
                        damaged++;
                    }
                }
            }

            return damaged;
        }
    }
}
