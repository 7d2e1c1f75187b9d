using ILGPU;

namespace KvPacket.Compute.Ilgpu;

/// <summary>Greedy decoding's argmax on the device.</summary>
public static partial class IlgpuKernels
{
    /// <summary>
    /// The first half of next[r] = the index of row r's largest logit (the first, on ties, as
    /// <c>TensorPrimitives.IndexOfMax</c> picks), so a greedy step sends the host ids, not logits: group g of row r takes
    /// the best of slice g of the row (a vocabulary of 128k floats walked by one warp is a chain of 4k dependent loads)
    /// into best[r × slices + g] and at[r × slices + g] (−∞ and <see cref="int.MaxValue"/> for an empty slice). Launch
    /// <paramref name="slices"/> × rows groups of up to <see cref="NormThreads"/> threads; <see cref="ArgMaxMerge"/> finishes.
    /// </summary>
    public static void ArgMaxSlices(ArrayView<float> logits, ArrayView<float> best, ArrayView<int> at, int vocab, int slices)
    {
        var groupBest = SharedMemory.Allocate<float>(NormThreads);
        var groupAt = SharedMemory.Allocate<int>(NormThreads);
        int row = Grid.IdxX / slices, slice = Grid.IdxX % slices, thread = Group.IdxX;
        int length = (vocab + slices - 1) / slices, from = slice * length, to = Math.Min(vocab, from + length);
        long start = (long)row * vocab;
        float value = float.NegativeInfinity;
        int index = int.MaxValue;
        for (int j = from + thread; j < to; j += Group.DimX)
            if (logits[start + j] > value || index == int.MaxValue)
            {
                value = logits[start + j];
                index = j;
            }
        (value, index) = WarpBest(value, index);
        if (Warp.LaneIdx == 0)
        {
            groupBest[Warp.WarpIdx] = value;
            groupAt[Warp.WarpIdx] = index;
        }
        Group.Barrier();
        if (thread != 0) return;
        for (int w = 1; w < Group.DimX / Warp.WarpSize; w++)
            if (groupBest[w] > value || (groupBest[w] == value && groupAt[w] < index))
            {
                value = groupBest[w];
                index = groupAt[w];
            }
        best[Grid.IdxX] = value;
        at[Grid.IdxX] = index;
    }

    /// <summary>
    /// next[r] = the best of row r's <paramref name="slices"/> (from <see cref="ArgMaxSlices"/>), one warp per row. Launch with
    /// <see cref="WarpsPerGroup"/> warps per group, <paramref name="rows"/> warps in all.
    /// </summary>
    public static void ArgMaxMerge(ArrayView<float> best, ArrayView<int> at, ArrayView<int> next, int slices, int rows)
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize;
        bool used = warp < rows;
        long first = (long)(used ? warp : 0) * slices;
        float value = float.NegativeInfinity;
        int index = int.MaxValue;
        for (int s = Warp.LaneIdx; s < slices; s += Warp.WarpSize)
            if (best[first + s] > value || (best[first + s] == value && at[first + s] < index))
            {
                value = best[first + s];
                index = at[first + s];
            }
        (value, index) = WarpBest(value, index);
        if (used && Warp.LaneIdx == 0) next[warp] = index;
    }

    /// <summary>The warp's best (value, index): the larger value, the smaller index on ties; in every lane.</summary>
    private static (float Value, int Index) WarpBest(float value, int index)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            float otherValue = Warp.ShuffleXor(value, offset);
            int otherIndex = Warp.ShuffleXor(index, offset);
            if (otherValue > value || (otherValue == value && otherIndex < index))
            {
                value = otherValue;
                index = otherIndex;
            }
        }
        return (value, index);
    }
}
