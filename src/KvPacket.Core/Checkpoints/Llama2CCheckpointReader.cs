using System.Buffers.Binary;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Reads llama2.c <c>.bin</c> checkpoints: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
/// vocab_size, seq_len; a negative vocab_size means an unshared classifier follows) and then f32 tensors,
/// layer-stacked, in a fixed order. RoPE pairs are interleaved. The weights are used in the file's image in memory (<see cref="FileBytes.Load(string)"/>), not converted.
/// </summary>
public static class Llama2CCheckpointReader
{
    private const int HeaderBytes = 7 * sizeof(int);

    /// <summary>Loads the checkpoint at <paramref name="path"/>.</summary>
    public static unsafe Checkpoint Read(string path)
    {
        var file = FileBytes.Load(path);
        try
        {
            if (file.Length < HeaderBytes)
                throw new CheckpointFormatException(path, "header", $"file has {file.Length} bytes, the header alone needs {HeaderBytes}");
            int Field(int index) => BinaryPrimitives.ReadInt32LittleEndian(file.Bytes(index * 4, 4));
            int dim = Field(0), hidden = Field(1), layers = Field(2), heads = Field(3), kvHeads = Field(4), vocab = Field(5), seqLen = Field(6);
            bool shared = vocab > 0;
            vocab = Math.Abs(vocab);
            string[] fieldNames = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
            int[] values = [dim, hidden, layers, heads, kvHeads, vocab, seqLen];
            for (int i = 0; i < values.Length; i++)
                if (values[i] <= 0 || values[i] > 1 << 24)
                    throw new CheckpointFormatException(path, fieldNames[i], $"implausible value {values[i]} (is this a llama2.c checkpoint?)");
            if (dim % heads != 0) throw new CheckpointFormatException(path, "n_heads", $"{heads} does not divide dim {dim}");

            int headDim = dim / heads;
            var config = new ModelConfig
            {
                Architecture = "llama",
                HiddenSize = dim,
                IntermediateSize = hidden,
                LayerCount = layers,
                HeadCount = heads,
                KvHeadCount = kvHeads,
                HeadDim = headDim,
                VocabSize = vocab,
                MaxContextLength = seqLen,
                NormEpsilon = 1e-5,
                RopeTheta = 10000,
                RopeStyle = RopeStyle.Interleaved,
                TiedEmbeddings = shared,
                BosTokenId = 1,
                EosTokenIds = [2],
            };
            config.Validate(path);

            var names = TensorNames.HuggingFace;
            var tensors = new Dictionary<string, WeightTensor>();
            long offset = HeaderBytes;
            int kvDim = kvHeads * headDim;

            // Tensors follow the header in this fixed order, each stacked over layers.
            void Take(string what, Func<int, string> name, int count, int rows, int columns)
            {
                long bytes = 4L * rows * columns * count;
                if (offset + bytes > file.Length)
                    throw new CheckpointFormatException(path, what, $"file is truncated: needs {offset + bytes} bytes, has {file.Length}");
                for (int i = 0; i < count; i++)
                    tensors[name(i)] = new WeightTensor(name(i), DType.F32, rows, columns, file.Pointer + offset + 4L * rows * columns * i);
                offset += bytes;
            }
            Take("token_embedding_table", _ => names.Embedding, 1, vocab, dim);
            Take("rms_att_weight", i => names.Layer(i, LayerTensor.AttentionNorm), layers, 1, dim);
            Take("wq", i => names.Layer(i, LayerTensor.Query), layers, heads * headDim, dim);
            Take("wk", i => names.Layer(i, LayerTensor.Key), layers, kvDim, dim);
            Take("wv", i => names.Layer(i, LayerTensor.Value), layers, kvDim, dim);
            Take("wo", i => names.Layer(i, LayerTensor.Output), layers, dim, heads * headDim);
            Take("rms_ffn_weight", i => names.Layer(i, LayerTensor.FfnNorm), layers, 1, dim);
            Take("w1", i => names.Layer(i, LayerTensor.Gate), layers, hidden, dim);
            Take("w2", i => names.Layer(i, LayerTensor.Down), layers, dim, hidden);
            Take("w3", i => names.Layer(i, LayerTensor.Up), layers, hidden, dim);
            Take("rms_final_weight", _ => names.FinalNorm, 1, 1, dim);
            Take("freq_cis", _ => "freq_cis (unused)", 1, 2 * seqLen, headDim / 2);
            if (!shared) Take("wcls", _ => names.Classifier, 1, vocab, dim);
            // llama2.c files hold exactly these tensors: bytes left over mean the header's shapes are not the file's.
            if (offset != file.Length)
                throw new CheckpointFormatException(path, "header", $"its shapes account for {offset} bytes but the file has {file.Length} (a wrong vocab_size or dimension?)");

            return CheckpointAssembler.Assemble(path, config, tensors, names, [file]);
        }
        catch (Exception e) when (e is not CheckpointFormatException)
        {
            file.Dispose();
            throw new CheckpointFormatException(path, "file", e.Message, e);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }
}
