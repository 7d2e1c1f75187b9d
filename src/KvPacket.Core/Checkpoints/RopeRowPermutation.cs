using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Maps q/k projection rows between the two RoPE layouts. Within each head of width d, interleaved row 2j+h
/// (h ∈ {0, 1}) is rotate-half row h·d/2 + j.
/// </summary>
public static class RopeRowPermutation
{
    /// <summary>The source row that lands at <paramref name="targetRow"/> when converting to <paramref name="targetStyle"/>.</summary>
    public static int SourceRow(int targetRow, int headDim, RopeStyle targetStyle)
    {
        int head = targetRow / headDim, within = targetRow % headDim, half = headDim / 2;
        int source = targetStyle == RopeStyle.RotateHalf
            ? 2 * (within % half) + within / half      // target is rotate-half: read the interleaved row
            : (within % 2) * half + within / 2;        // target is interleaved: read the rotate-half row
        return head * headDim + source;
    }
}
