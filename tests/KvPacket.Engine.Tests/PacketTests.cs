using KvPacket.Compute.Cpu;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Threading;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using Xunit;

namespace KvPacket.Tests;

public unsafe class PacketTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private static int[] Tokens(int count, ulong seed) => ReferenceModels.RandomTokens(count, seed);

    private static Transformer Model(Checkpoint checkpoint) =>
        new(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048, MaxBatchTokens = 128, MaxBatchSequences = 4 });

    private static float[] Prefill(Transformer model, Sequence sequence, ReadOnlySpan<int> tokens)
    {
        var batch = new ForwardBatch(128, 1);
        batch.Add(sequence, tokens, LogitsFor.AllTokens);
        var logits = new float[tokens.Length * model.Config.VocabSize];
        model.Forward(batch, logits);
        return logits;
    }

    private static double MaxAbs(float[] a, float[] b) => ReferenceModels.MaxAbs(a, b);

    [Fact]
    public void With_one_document_and_no_adapter_naive_equals_full()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] document = Tokens(37, 1), query = Tokens(9, 2);

        using var full = model.CreateSequence();
        var expected = Prefill(model, full, [.. document, .. query]).AsSpan(document.Length * 512).ToArray();

        using var packet = model.BuildPacket(document);
        using var naive = model.CreateSequence();
        naive.AppendPacket(packet);
        var actual = Prefill(model, naive, query);

        Assert.InRange(MaxAbs(expected, actual), 0, 1e-4);
    }

    /// <summary>
    /// Through the whole model: realigned packets give the logits of re-rotated key copies. Logits here reach ~10 in
    /// magnitude and the copies are rotated in f32, so the bound is 5e-5 (5e-6 relative); the kernel test below holds 1e-5.
    /// </summary>
    [Theory]
    [InlineData(37, 21)]
    [InlineData(16, 48)]
    [InlineData(5, 3)]
    public void Query_side_realignment_equals_key_re_rotation(int firstLength, int secondLength)
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] first = Tokens(firstLength, 3), second = Tokens(secondLength, 4), query = Tokens(7, 5);
        using var packetA = model.BuildPacket(first);
        using var packetB = model.BuildPacket(second);

        using var realigned = model.CreateSequence();
        realigned.AppendPacket(packetA);
        realigned.AppendPacket(packetB);
        var byQuery = Prefill(model, realigned, query);

        using var rotated = model.CreateSequence();
        rotated.AppendPacket(packetA);
        var copies = RotatedCopy(model, packetB, offset: firstLength);
        rotated.AppendOwnedBlocks(copies, secondLength);
        var byKeys = Prefill(model, rotated, query);

        Assert.InRange(MaxAbs(byKeys, byQuery), 0, 5e-5);
        Assert.Equal(byQuery.Length, byKeys.Length);
    }

    /// <summary>
    /// Packets left at the positions they were computed at (KVLink's re-positioning ablated): the query sees each
    /// document's keys where its packet put them, so the order the packets are placed in cannot matter beyond summation
    /// order — realigned, it does. A packet whose key origin is its placement is realigned.
    /// </summary>
    [Fact]
    public void Unaligned_packets_are_seen_alike_in_either_order()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] first = Tokens(37, 6), second = Tokens(21, 7), query = Tokens(7, 8);
        using var packetA = model.BuildPacket(first);
        using var packetB = model.BuildPacket(second);
        float[] Logits(Packet one, Packet two, bool realign)
        {
            using var sequence = model.CreateSequence();
            sequence.AppendPacket(one, keyOrigin: realign ? -1 : 0);
            sequence.AppendPacket(two, keyOrigin: realign ? -1 : 0);
            return Prefill(model, sequence, query);
        }

        Assert.InRange(MaxAbs(Logits(packetA, packetB, realign: false), Logits(packetB, packetA, realign: false)), 0, 1e-4);
        Assert.True(MaxAbs(Logits(packetA, packetB, realign: true), Logits(packetB, packetA, realign: true)) > 1e-2);
        Assert.True(MaxAbs(Logits(packetA, packetB, realign: false), Logits(packetA, packetB, realign: true)) > 1e-2);

        using var originAtPlacement = model.CreateSequence();
        originAtPlacement.AppendPacket(packetA, keyOrigin: 0);
        originAtPlacement.AppendPacket(packetB, keyOrigin: first.Length);
        Assert.Equal(Logits(packetA, packetB, realign: true), Prefill(model, originAtPlacement, query));
    }

    /// <summary>
    /// The attention kernel on random packets at random offsets: rotating the query by −offset equals attending to
    /// copies of the keys re-rotated (in float64, rounded once) to their global positions.
    /// </summary>
    [Theory]
    [InlineData(5, 37, 1)]
    [InlineData(16, 16, 2)]
    [InlineData(200, 50, 3)]
    [InlineData(1, 3, 4)]
    public void Query_side_realignment_equals_key_re_rotation_in_the_attention_kernel(int offset, int packetLength, ulong seed)
    {
        const int Heads = 4, KvHeads = 2, HeadDim = 16, Queries = 3;
        var config = new ModelConfig
        {
            HiddenSize = Heads * HeadDim, IntermediateSize = 1, LayerCount = 1, HeadCount = Heads, KvHeadCount = KvHeads,
            HeadDim = HeadDim, VocabSize = 1, MaxContextLength = 4096, RopeTheta = 10000,
        };
        var layout = KvCacheLayout.For(config, DType.F32);
        using var pool = new KvBlockPool(layout, 64);
        var rope = new RotaryEmbedding(config);
        var random = new SeededRandom(seed);
        int B = layout.BlockSize;

        // Positions [0, offset) in ordinary blocks, then the packet's blocks (keys rotated at local positions).
        var prefix = new List<KvBlockEntry>();
        for (int p = 0; p < offset; p += B) prefix.Add(new KvBlockEntry(RandomBlock(pool, ref random), p, Math.Min(B, offset - p), 0, false));
        var packet = new List<KvBlockEntry>();
        var copies = new List<KvBlockEntry>();
        for (int p = 0; p < packetLength; p += B)
        {
            int block = RandomBlock(pool, ref random), count = Math.Min(B, packetLength - p);
            packet.Add(new KvBlockEntry(block, offset + p, count, offset, true));
            copies.Add(new KvBlockEntry(RotatedCopy(pool, block, offset, config), offset + p, count, 0, true));
        }
        // Three fresh query tokens after the packet, their own K/V in a last ordinary block.
        int first = offset + packetLength;
        var tail = new KvBlockEntry(RandomBlock(pool, ref random), first, Queries, 0, false);

        using var workers = new WorkerPool(2);
        using var attention = new PagedAttention(pool, workers, rope, Heads, 4096, Queries);
        using var q = new NativeBuffer<float>(Queries * Heads * HeadDim);
        using var angles = new NativeBuffer<float>(2 * Queries * HeadDim / 2);
        for (int i = 0; i < q.Length; i++) q.Pointer[i] = 2 * random.NextSingle() - 1;
        for (int t = 0; t < Queries; t++) rope.Angles(first + t, angles.Slice(t * HeadDim / 2, HeadDim / 2), angles.Slice((Queries + t) * HeadDim / 2, HeadDim / 2));

        float[] Run(List<KvBlockEntry> middle)
        {
            var batch = new AttentionBatch(Queries, 1) { TokenCount = Queries };
            batch.Tables[0] = [.. prefix, .. middle, tail];
            batch.TableLengths[0] = batch.Tables[0].Length;
            for (int t = 0; t < Queries; t++) batch.Positions[t] = first + t;
            var output = new float[Queries * Heads * HeadDim];
            fixed (float* o = output) attention.Attend(0, batch, q.Pointer, o, angles.Pointer, angles.Pointer + Queries * HeadDim / 2);
            return output;
        }

        var byQuery = Run(packet);
        var byKeys = Run(copies);
        Assert.InRange(MaxAbs(byKeys, byQuery), 0, 1e-5);
        Assert.InRange(MaxAbs(byKeys, Run(packet.Select(e => e with { RotationOffset = 0 }).ToList())), 1e-3, double.MaxValue); // offsets matter
    }

    private static int RandomBlock(KvBlockPool pool, ref SeededRandom random)
    {
        int block = pool.Allocate();
        var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(pool.BlockBytes(block));
        for (int i = 0; i < values.Length; i++) values[i] = 2 * random.NextSingle() - 1;
        return block;
    }

    /// <summary>A copy of <paramref name="block"/> whose keys are rotated forward by <paramref name="offset"/> in float64.</summary>
    private static int RotatedCopy(KvBlockPool pool, int block, int offset, ModelConfig config)
    {
        int copy = pool.Allocate();
        pool.BlockBytes(block).CopyTo(pool.BlockBytes(copy));
        var layout = pool.Layout;
        int half = layout.HeadDim / 2;
        float* keys = (float*)pool.Key(copy, 0);
        for (int g = 0; g < layout.KvHeadCount; g++)
            for (int slot = 0; slot < layout.BlockSize; slot++)
            {
                float* k = keys + layout.Offset(g, slot);
                for (int i = 0; i < half; i++)
                {
                    double angle = offset * Math.Pow(config.RopeTheta, -2.0 * i / layout.HeadDim);
                    double a = k[i], b = k[i + half];
                    k[i] = (float)(a * Math.Cos(angle) - b * Math.Sin(angle));
                    k[i + half] = (float)(a * Math.Sin(angle) + b * Math.Cos(angle));
                }
            }
        return copy;
    }

    /// <summary>Soft tokens equal to real tokens' embeddings must give exactly the packet of those tokens.</summary>
    [Fact]
    public void A_packet_with_header_and_trailer_soft_tokens_equals_one_built_from_the_same_embeddings_as_tokens()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] header = Tokens(3, 20), document = Tokens(25, 21), trailer = Tokens(2, 22), query = Tokens(4, 23);
        float[] Embed(int[] ids)
        {
            var rows = new float[ids.Length * 64];
            for (int i = 0; i < ids.Length; i++) checkpoint.TokenEmbedding.ReadRow(ids[i], rows.AsSpan(i * 64, 64));
            return rows;
        }
        using var soft = model.BuildPacket(document, Embed(header), Embed(trailer));
        using var hard = model.BuildPacket([.. header, .. document, .. trailer]);
        Assert.Equal(30, soft.Length);

        using var a = model.CreateSequence();
        using var b = model.CreateSequence();
        a.AppendPacket(soft);
        b.AppendPacket(hard);
        Assert.Equal(Prefill(model, b, query), Prefill(model, a, query));
    }

    [Fact]
    public void Realignment_matters_naive_concatenation_differs_from_full_context()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] first = Tokens(20, 6), second = Tokens(20, 7), query = Tokens(5, 8);
        using var full = model.CreateSequence();
        var expected = Prefill(model, full, [.. first, .. second, .. query]).AsSpan(40 * 512).ToArray();
        using var a = model.BuildPacket(first);
        using var b = model.BuildPacket(second);
        using var naive = model.CreateSequence();
        naive.AppendPacket(a);
        naive.AppendPacket(b);

        // The second document never attended to the first: the gap DESIGN.md §1 says the adapters and link tokens close.
        Assert.InRange(MaxAbs(expected, Prefill(model, naive, query)), 1e-3, double.MaxValue);
    }

    [Fact]
    public void A_packet_shared_by_two_requests_in_one_batch_gives_each_the_result_it_gets_alone_and_is_never_written()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] document = Tokens(40, 9), prefix = Tokens(11, 10), queryA = Tokens(6, 11), queryB = Tokens(4, 12);
        using var packet = model.BuildPacket(document);
        byte[] before = Checksum(model.KvPool, packet);

        float[] Alone(int[]? head, int[] query)
        {
            using var sequence = model.CreateSequence();
            if (head is not null) Prefill(model, sequence, head);
            sequence.AppendPacket(packet);
            return Prefill(model, sequence, query);
        }
        var expectedA = Alone(null, queryA);
        var expectedB = Alone(prefix, queryB);

        using var a = model.CreateSequence();
        using var b = model.CreateSequence();
        Prefill(model, b, prefix);
        a.AppendPacket(packet);
        b.AppendPacket(packet);
        var batch = new ForwardBatch(128, 2);
        batch.Add(a, queryA, LogitsFor.AllTokens);
        batch.Add(b, queryB, LogitsFor.AllTokens);
        var logits = new float[batch.LogitRowCount * 512];
        model.Forward(batch, logits);

        Assert.Equal(expectedA, logits[..expectedA.Length]);
        Assert.Equal(expectedB, logits[expectedA.Length..]);
        Assert.Equal(before, Checksum(model.KvPool, packet));
        Assert.Equal(3, model.KvPool.ReferenceCount(packet.Blocks[0]));   // the packet and two sequences
    }

    [Fact]
    public void Every_block_returns_to_the_pool_once_packets_and_sequences_are_disposed()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var packet = model.BuildPacket(Tokens(50, 13));
        var sequence = model.CreateSequence();
        sequence.AppendPacket(packet);
        Prefill(model, sequence, Tokens(3, 14));
        packet.Dispose();
        Assert.NotEqual(model.KvPool.BlockCount, model.KvPool.FreeBlockCount); // the sequence still holds the packet's blocks
        sequence.Dispose();
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount);
    }

    [Fact]
    public void Packets_of_another_model_and_offsets_beyond_the_context_are_clear_errors()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        using var other = Model(checkpoint);
        using var foreign = other.BuildPacket(Tokens(10, 15));
        using var sequence = model.CreateSequence();
        Assert.Contains("another model", Assert.Throws<ArgumentException>(() => sequence.AppendPacket(foreign)).Message);

        using var big = model.BuildPacket(Tokens(300, 16));
        sequence.AppendPacket(big);
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => sequence.AppendPacket(big));
        Assert.Contains("context of 512", error.Message);
        Assert.Equal(300, sequence.Length);
    }

    /// <summary>Copies a packet's blocks with every key rotated forward by <paramref name="offset"/> (f32 KV).</summary>
    private static int[] RotatedCopy(Transformer model, Packet packet, int offset)
    {
        var pool = model.KvPool;
        var layout = pool.Layout;
        var rope = new RotaryEmbedding(model.Config);
        var cos = new float[rope.PairCount];
        var sin = new float[rope.PairCount];
        rope.Angles(offset, cos, sin);
        var copies = new int[packet.Blocks.Count];
        for (int b = 0; b < copies.Length; b++)
        {
            copies[b] = pool.Allocate();
            pool.BlockBytes(packet.Blocks[b]).CopyTo(pool.BlockBytes(copies[b]));
            for (int layer = 0; layer < layout.LayerCount; layer++)
            {
                float* keys = (float*)pool.Key(copies[b], layer);
                for (int g = 0; g < layout.KvHeadCount; g++)
                    for (int slot = 0; slot < layout.BlockSize; slot++)
                        rope.Rotate(new Span<float>(keys + layout.Offset(g, slot), layout.HeadDim), 1, cos, sin);
            }
        }
        return copies;
    }

    private static byte[] Checksum(KvBlockPool pool, Packet packet) =>
        System.Security.Cryptography.SHA256.HashData(packet.Blocks.SelectMany(block => pool.BlockBytes(block).ToArray()).ToArray());

    [Fact]
    public void A_staging_pool_in_the_callers_memory_holds_a_packet_byte_for_byte_and_frees_it_once()
    {
        // A device backend's staging pool (page-locked on a GPU) is memory the backend allocated; the CPU backend's default
        // staging is plain native memory. A packet exported into either reads back the same bytes.
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var layout = model.KvPool.Layout;
        int[] document = Tokens(37, 4);
        int frees = 0;
        nint memory = (nint)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(layout.BlockBytes * 4), 64);
        var external = new KvBlockPool(layout, 4, memory, pointer =>
        {
            frees++;
            System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)pointer);
        }, pageLocked: false);
        using (var plain = ((IForwardBackend)model).CreateStagingPool(4))
        using (var packet = ((IForwardBackend)model).BuildPacket(document))
        using (var a = model.ExportPacket(packet, external))
        using (var b = model.ExportPacket(packet, plain))
        {
            Assert.Equal(packet.Blocks.Count, a.Blocks.Count);
            for (int i = 0; i < a.Blocks.Count; i++) Assert.True(external.BlockBytes(a.Blocks[i]).SequenceEqual(plain.BlockBytes(b.Blocks[i])), $"block {i} differs");
            Assert.Throws<ArgumentOutOfRangeException>(() => external.BlockBytes(4));
        }
        external.Dispose();
        external.Dispose();
        Assert.Equal(1, frees);
        Assert.Throws<ObjectDisposedException>(() => external.BlockBytes(0));
    }
}
