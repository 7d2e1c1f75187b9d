using KvPacket.Core.Memory;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// The type each matrix of a GGUF file is written in, by its GGUF name and layer: one type for every matrix, or a
/// llama.cpp-style mix. <see cref="Q4_K_M"/> follows llama.cpp's rule for that name: q6_K for the output matrix (the
/// token embedding when it is tied) and for <c>attn_v</c> and <c>ffn_down</c> in the first and last eighth of the
/// layers and every third layer between, q4_K for the rest. Rows that are not whole blocks still fall back
/// (<see cref="CheckpointExporter.RowType"/>).
/// </summary>
public sealed class QuantisationMix
{
    private readonly Func<string, int, int, DType> _typeOf;

    private QuantisationMix(string name, Func<string, int, int, DType> typeOf) => (Name, _typeOf) = (name, typeOf);

    /// <summary>The mix's name (a type's name for a uniform one).</summary>
    public string Name { get; }

    /// <summary>The type of matrix <paramref name="tensor"/> (a GGUF name) in layer <paramref name="layer"/> (−1 outside the layers) of <paramref name="layers"/>.</summary>
    public DType TypeOf(string tensor, int layer, int layers) => _typeOf(tensor, layer, layers);

    /// <summary>Every matrix in <paramref name="type"/>.</summary>
    public static QuantisationMix Uniform(DType type) => new(type.ToString(), (_, _, _) => type);

    /// <summary>llama.cpp's Q4_K_M: mostly q4_K, q6_K where it matters most.</summary>
    public static QuantisationMix Q4_K_M { get; } = new("Q4_K_M", (tensor, layer, layers) =>
        tensor == TensorNames.Gguf.Classifier || ((tensor.Contains(".attn_v.") || tensor.Contains(".ffn_down.")) && MoreBits(layer, layers))
            ? DType.Q6_K : DType.Q4_K);

    /// <summary>The file types and mixes <see cref="Parse"/> knows.</summary>
    public static IReadOnlyList<string> Names { get; } = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0", "Q4_K_M"];

    /// <summary>The mix or type named <paramref name="name"/> (case-insensitive).</summary>
    /// <exception cref="ArgumentException">No such name.</exception>
    public static QuantisationMix Parse(string name) =>
        name.Equals("Q4_K_M", StringComparison.OrdinalIgnoreCase) ? Q4_K_M
        : Names.Contains(name, StringComparer.OrdinalIgnoreCase) ? Uniform(Enum.Parse<DType>(name, ignoreCase: true))
        : throw new ArgumentException($"'{name}' is not a GGUF weight type or mix ({string.Join(", ", Names)})", nameof(name));

    /// <summary>llama.cpp's choice of layers that keep more bits: the first and last eighth, and every third between.</summary>
    private static bool MoreBits(int layer, int layers) => layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}
