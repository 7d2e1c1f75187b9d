using KvPacket.Core.Model;

namespace KvPacket.Engine.Rag;

/// <summary>Analytic forward FLOPs (a multiply-add is 2): projections, attention and MLP, without the classifier.</summary>
public static class FlopCount
{
    /// <summary>FLOPs to compute one token at <paramref name="position"/> (it attends to position + 1 keys).</summary>
    public static double Token(ModelConfig c, int position)
    {
        double projections = 2.0 * (2L * c.HiddenSize * c.QueryDim + 2L * c.HiddenSize * c.KvDim + 3L * c.HiddenSize * c.IntermediateSize);
        double attention = 4.0 * c.QueryDim * (position + 1);
        return c.LayerCount * (projections + attention);
    }

    /// <summary>FLOPs to compute positions [<paramref name="first"/>, first + <paramref name="count"/>).</summary>
    public static double Tokens(ModelConfig c, int first, int count)
    {
        double sum = 0;
        for (int p = first; p < first + count; p++) sum += Token(c, p);
        return sum;
    }
}
