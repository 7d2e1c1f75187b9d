using System.Runtime.InteropServices;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Writes a loaded checkpoint back out as a Hugging Face directory or a GGUF file, converting the element type and
/// permuting q/k rows when the target's RoPE layout differs from the source's.
/// </summary>
public static class CheckpointExporter
{
    /// <summary>Writes <c>config.json</c> and <c>model.safetensors</c> (rotate-half RoPE layout) into <paramref name="directory"/>.</summary>
    public static void WriteHuggingFace(Checkpoint checkpoint, string directory, DType type)
    {
        Directory.CreateDirectory(directory);
        var config = checkpoint.Config with { RopeStyle = RopeStyle.RotateHalf };
        HuggingFaceConfig.Write(config, Path.Combine(directory, "config.json"));
        SafetensorsWriter.Write(Path.Combine(directory, "model.safetensors"), Tensors(checkpoint, TensorNames.HuggingFace, RopeStyle.RotateHalf, QuantisationMix.Uniform(type)));
    }

    /// <summary>
    /// Writes a GGUF v3 file of architecture <c>llama</c> (interleaved RoPE layout), or <c>qwen2</c> for a Qwen2 model
    /// (rotate-half RoPE layout, as llama.cpp's converter leaves it), to <paramref name="path"/>, with
    /// <paramref name="vocabulary"/> — the SentencePiece or byte-level BPE tokenizer next to the model, else a
    /// <see cref="GgufVocabulary.Placeholder"/> — so llama.cpp loads it.
    /// </summary>
    public static void WriteGguf(Checkpoint checkpoint, string path, DType type, GgufVocabulary? vocabulary = null) =>
        WriteGguf(checkpoint, path, QuantisationMix.Uniform(type), vocabulary);

    /// <summary>As <see cref="WriteGguf(Checkpoint, string, DType, GgufVocabulary?)"/>, each matrix in the type <paramref name="mix"/> gives it.</summary>
    public static void WriteGguf(Checkpoint checkpoint, string path, QuantisationMix mix, GgufVocabulary? vocabulary = null)
    {
        var c = checkpoint.Config;
        string arch = c.Architecture == "qwen2" ? "qwen2" : "llama";
        var metadata = new List<KeyValuePair<string, object>>
        {
            new("general.architecture", arch),
            new("general.name", Path.GetFileNameWithoutExtension(checkpoint.Source)),
            new($"{arch}.context_length", (uint)c.MaxContextLength),
            new($"{arch}.embedding_length", (uint)c.HiddenSize),
            new($"{arch}.block_count", (uint)c.LayerCount),
            new($"{arch}.feed_forward_length", (uint)c.IntermediateSize),
            new($"{arch}.attention.head_count", (uint)c.HeadCount),
            new($"{arch}.attention.head_count_kv", (uint)c.KvHeadCount),
            new($"{arch}.attention.key_length", (uint)c.HeadDim),
            new($"{arch}.rope.dimension_count", (uint)c.HeadDim),
            new($"{arch}.attention.layer_norm_rms_epsilon", (float)c.NormEpsilon),
            new($"{arch}.rope.freq_base", (float)c.RopeTheta),
            new($"{arch}.vocab_size", (uint)c.VocabSize),
        };
        vocabulary ??= TokenizerLoader.TryLoadNextTo(checkpoint.Source) switch
        {
            SentencePieceTokenizer own => GgufVocabulary.From(own),
            ByteLevelBpeTokenizer { Merges: not null, PreTokenizerPattern: not null } bpe => GgufVocabulary.From(bpe),
            _ => GgufVocabulary.Placeholder(c.VocabSize) with { Bos = c.BosTokenId ?? 1, Eos = c.EosTokenIds.Count > 0 ? c.EosTokenIds[0] : 2 },
        };
        if (vocabulary.Pieces.Length != c.VocabSize)
            throw new ArgumentException($"a vocabulary of {vocabulary.Pieces.Length} pieces for a model of {c.VocabSize}.", nameof(vocabulary));
        metadata.AddRange(vocabulary.Metadata());
        var tensors = Tensors(checkpoint, TensorNames.Gguf, GgufFormat.RopeStyleOf(arch), mix);
        // Llama-3 scaling travels as llama.cpp's per-frequency divisors.
        var factors = c.RopeFrequencyFactors ?? (c.RopeScaling is { } scaling ? RopeFrequencyFactors.Of(scaling, c.RopeTheta, c.HeadDim) : null);
        if (factors is not null)
        {
            var values = factors.Values.Select(v => (float)v).ToArray();
            tensors.Add(new TensorToWrite(GgufReader.RopeFrequenciesTensor, DType.F32, [values.Length], stream => stream.Write(MemoryMarshal.AsBytes(values.AsSpan()))));
        }
        GgufWriter.Write(path, metadata, tensors);
    }

    private static List<TensorToWrite> Tensors(Checkpoint checkpoint, TensorNames names, RopeStyle targetStyle, QuantisationMix mix)
    {
        var c = checkpoint.Config;
        bool permute = c.RopeStyle != targetStyle;
        Func<int, int>? qkRows = permute ? row => RopeRowPermutation.SourceRow(row, c.HeadDim, targetStyle) : null;
        // A tied embedding is the output matrix too: it gets the output's type.
        var list = new List<TensorToWrite> { Rows(names.Embedding, checkpoint.TokenEmbedding, mix.TypeOf(c.TiedEmbeddings ? names.Classifier : names.Embedding, -1, c.LayerCount)) };
        for (int i = 0; i < c.LayerCount; i++)
        {
            var l = checkpoint.Layers[i];
            string N(LayerTensor role) => names.Layer(i, role);
            DType T(LayerTensor role) => mix.TypeOf(N(role), i, c.LayerCount);
            list.Add(Rows(N(LayerTensor.AttentionNorm), l.AttentionNorm, DType.F32));
            list.Add(Rows(N(LayerTensor.Query), l.Query, T(LayerTensor.Query), qkRows));
            list.Add(Rows(N(LayerTensor.Key), l.Key, T(LayerTensor.Key), qkRows));
            list.Add(Rows(N(LayerTensor.Value), l.Value, T(LayerTensor.Value)));
            list.Add(Rows(N(LayerTensor.Output), l.Output, T(LayerTensor.Output)));
            if (c.AttentionBias)
            {
                list.Add(Columns(N(LayerTensor.QueryBias), l.QueryBias, permute, c.HeadDim, targetStyle));
                list.Add(Columns(N(LayerTensor.KeyBias), l.KeyBias, permute, c.HeadDim, targetStyle));
                list.Add(Rows(N(LayerTensor.ValueBias), l.ValueBias, DType.F32));
            }
            list.Add(Rows(N(LayerTensor.FfnNorm), l.FfnNorm, DType.F32));
            list.Add(Rows(N(LayerTensor.Gate), l.Gate, T(LayerTensor.Gate)));
            list.Add(Rows(N(LayerTensor.Up), l.Up, T(LayerTensor.Up)));
            list.Add(Rows(N(LayerTensor.Down), l.Down, T(LayerTensor.Down)));
        }
        list.Add(Rows(names.FinalNorm, checkpoint.FinalNorm, DType.F32));
        if (!c.TiedEmbeddings) list.Add(Rows(names.Classifier, checkpoint.Classifier, mix.TypeOf(names.Classifier, -1, c.LayerCount)));
        return list;
    }

    /// <summary>A matrix (or vector) streamed row by row in <paramref name="type"/>, rows optionally reordered.</summary>
    private static TensorToWrite Rows(string name, WeightTensor source, DType type, Func<int, int>? sourceRow = null)
    {
        type = RowType(type, source.Columns);
        long[] shape = IsVector(name) ? [source.Columns] : [source.Rows, source.Columns];
        return new TensorToWrite(name, type, shape, stream =>
        {
            var row = new float[source.Columns];
            var bytes = new byte[type.BytesFor(source.Columns)];
            for (int r = 0; r < source.Rows; r++)
            {
                source.ReadRow(sourceRow?.Invoke(r) ?? r, row);
                TensorEncoding.Encode(row, type, bytes);
                stream.Write(bytes);
            }
        });
    }

    /// <summary>
    /// The type a row of <paramref name="columns"/> is written in: blocks run along rows, so a row that is not whole
    /// blocks falls back: q4_K and q5_K to q4_0 (llama.cpp picks q5_0 / q5_1, not written here), q6_K to q8_0 (as
    /// llama.cpp), and a row that is not whole 32-value blocks either to f16.
    /// </summary>
    public static DType RowType(DType type, int columns) =>
        columns % type.BlockLength() == 0 ? type
        : type is DType.Q4_K or DType.Q5_K ? RowType(DType.Q4_0, columns)
        : type is DType.Q6_K ? RowType(DType.Q8_0, columns)
        : DType.F16;

    /// <summary>A bias vector whose elements follow the q/k row permutation.</summary>
    private static TensorToWrite Columns(string name, WeightTensor source, bool permute, int headDim, RopeStyle targetStyle) =>
        new(name, DType.F32, [source.Columns], stream =>
        {
            var values = new float[source.Columns];
            source.ReadRow(0, values);
            var output = new float[values.Length];
            for (int i = 0; i < output.Length; i++)
                output[i] = values[permute ? RopeRowPermutation.SourceRow(i, headDim, targetStyle) : i];
            stream.Write(MemoryMarshal.AsBytes(output.AsSpan()));
        });

    private static bool IsVector(string name) => name.Contains("norm") || name.EndsWith(".bias");
}
