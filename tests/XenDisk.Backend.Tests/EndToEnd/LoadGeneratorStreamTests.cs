using XenDisk.TestFrontend;
using Xunit;

namespace XenDisk.Backend.Tests.EndToEnd;

/// <summary>The load generator's per-slot random streams: the benchmarks' offsets depend on them being independent.</summary>
public sealed class LoadGeneratorStreamTests
{
    [Fact]
    public void Slots_do_not_replay_each_others_offsets()
    {
        const int Draws = 1000;
        var first = new HashSet<ulong>();
        ulong state = FrontendLoadGenerator.SlotStream(seed: 1, slot: 0);
        for (int i = 0; i < Draws; i++)
        {
            first.Add(FrontendLoadGenerator.NextRandom(ref state));
        }

        state = FrontendLoadGenerator.SlotStream(seed: 1, slot: 1);
        int shared = 0;
        for (int i = 0; i < Draws; i++)
        {
            shared += first.Contains(FrontendLoadGenerator.NextRandom(ref state)) ? 1 : 0;
        }

        Assert.Equal(0, shared);
    }

    [Fact]
    public void Thirty_two_slots_cover_blocks_as_a_uniform_load_would()
    {
        // 32 slots x 2,000 draws over 65,536 blocks: a uniform load touches B(1 - (1 - 1/B)^N) distinct
        // blocks, about 40,600. Streams that overlap touch far fewer.
        const int Blocks = 65536;
        const int Slots = 32;
        const int DrawsPerSlot = 2000;
        var touched = new HashSet<ulong>();
        for (int slot = 0; slot < Slots; slot++)
        {
            ulong state = FrontendLoadGenerator.SlotStream(seed: 7, slot);
            for (int i = 0; i < DrawsPerSlot; i++)
            {
                touched.Add(FrontendLoadGenerator.NextRandom(ref state) % Blocks);
            }
        }

        double expected = Blocks * (1 - Math.Pow(1 - (1.0 / Blocks), Slots * DrawsPerSlot));
        Assert.InRange(touched.Count, expected * 0.98, expected * 1.02);
    }
}
