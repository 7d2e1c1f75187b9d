using KvPacket.Compute.Kv;

namespace KvPacket.Engine.Forward;

/// <summary>
/// Token pruning of a packet (in the spirit of heavy-hitter KV eviction): keep the document tokens that received the
/// most attention while the packet was built, drop the rest. Kept tokens keep their keys as rotated at their original
/// positions, so the packet still spans its whole document when placed.
/// </summary>
internal static class TokenPruning
{
    /// <summary>
    /// Positions to keep, ascending: every header position [0, <paramref name="header"/>), every trailer position after the
    /// document, and the ⌈<paramref name="keep"/>·n⌉ document positions with the most attention mass.
    /// </summary>
    public static int[] Select(ReadOnlySpan<float> mass, int header, int documentLength, double keep)
    {
        int keepDocument = Math.Max(1, (int)Math.Ceiling(keep * documentLength));
        var document = Enumerable.Range(header, documentLength).ToArray();
        var weights = mass.Slice(header, documentLength).ToArray();
        Array.Sort(weights, document);              // ascending mass
        var kept = new List<int>(mass.Length);
        kept.AddRange(Enumerable.Range(0, header));
        kept.AddRange(document.AsSpan(documentLength - keepDocument).ToArray());
        kept.AddRange(Enumerable.Range(header + documentLength, mass.Length - header - documentLength));
        kept.Sort();
        return [.. kept];
    }

    /// <summary>Copies the K and V rows of positions <paramref name="kept"/> (of a packet laid out from position 0 in <paramref name="blocks"/>) into fresh blocks, in order.</summary>
    public static unsafe int[] Gather(KvBlockPool pool, IReadOnlyList<int> blocks, int[] kept)
    {
        var layout = pool.Layout;
        int blockSize = layout.BlockSize, rowBytes = layout.HeadDim * layout.ElementBytes;
        var gathered = new int[(kept.Length + blockSize - 1) / blockSize];
        int allocated = 0;
        try
        {
            for (; allocated < gathered.Length; allocated++) gathered[allocated] = pool.Allocate();
            for (int k = 0; k < kept.Length; k++)
            {
                int from = blocks[kept[k] / blockSize], fromSlot = kept[k] % blockSize;
                int to = gathered[k / blockSize], toSlot = k % blockSize;
                for (int layer = 0; layer < layout.LayerCount; layer++)
                    for (int g = 0; g < layout.KvHeadCount; g++)
                    {
                        long source = layout.Offset(g, fromSlot) * layout.ElementBytes, target = layout.Offset(g, toSlot) * layout.ElementBytes;
                        Buffer.MemoryCopy(pool.Key(from, layer) + source, pool.Key(to, layer) + target, rowBytes, rowBytes);
                        Buffer.MemoryCopy(pool.Value(from, layer) + source, pool.Value(to, layer) + target, rowBytes, rowBytes);
                    }
            }
            return gathered;
        }
        catch
        {
            for (int i = 0; i < allocated; i++) pool.Release(gathered[i]);
            throw;
        }
    }
}
