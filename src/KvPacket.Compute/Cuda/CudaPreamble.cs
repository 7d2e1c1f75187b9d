using System.Globalization;
using System.Linq;
using System.Text;

namespace KvPacket.Compute.Cuda;

/// <summary>
/// The <c>#define</c>s and the RoPE table that <c>kernels.cu</c> expects in front of it. This one file is compiled into
/// the runtime (shapes without a card) and into the source generator (cards), so the two cannot drift apart.
/// </summary>
internal static class CudaPreamble
{
    public static string Write(string comment, int hidden, int intermediate, int heads, int kvHeads, int headDim, int layers, int blockTokens,
        double[] inverseFrequencies)
    {
        var c = CultureInfo.InvariantCulture;
        var s = new StringBuilder();
        s.Append("// ").Append(comment).Append('\n');
        foreach (var (name, value) in new[]
                 {
                     ("HIDDEN_SIZE", hidden), ("INTERMEDIATE_SIZE", intermediate), ("HEADS", heads), ("KV_HEADS", kvHeads), ("HEAD_DIM", headDim),
                     ("GROUP_SIZE", heads / kvHeads), ("ROPE_PAIRS", headDim / 2), ("LAYERS", layers), ("BLOCK_TOKENS", blockTokens),
                 })
            s.Append("#define ").Append(name).Append(' ').Append(value.ToString(c)).Append('\n');
        s.Append("__constant__ double ROPE_INV_FREQ[ROPE_PAIRS] = { ")
            .Append(string.Join(", ", inverseFrequencies.Select(f => f.ToString("R", c))))
            .Append(" };\n");
        return s.ToString();
    }
}
