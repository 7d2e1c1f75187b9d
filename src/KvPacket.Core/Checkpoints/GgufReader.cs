using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Reads GGUF v3 checkpoints of the <c>llama</c> and <c>qwen2</c> architectures with f32, f16, bf16, q8_0, q4_0, q4_K, q5_K or q6_K tensors,
/// all kept as stored in the file, loaded into memory (<see cref="FileBytes.Load(string)"/>; the kernels read the blocks as they are).
/// GGUF llama keeps q/k rows in the interleaved RoPE order (llama.cpp's converter undoes the HF permutation); qwen2 keeps
/// them rotate-half.
/// </summary>
public static class GgufReader
{
    /// <summary>Loads the checkpoint at <paramref name="path"/>.</summary>
    public static unsafe Checkpoint Read(string path)
    {
        var file = FileBytes.Load(path);
        var owners = new List<IDisposable> { file };
        try
        {
            var cursor = new Cursor(path, file);
            var (metadata, tensorCount) = ReadHeader(path, cursor);

            var infos = new List<(string Name, long[] Dims, GgufFormat.TensorType Type, ulong Offset)>();
            for (long i = 0; i < tensorCount; i++)
            {
                string name = cursor.String("tensor name");
                uint dimCount = cursor.UInt32(name);
                if (dimCount is 0 or > 4) throw new CheckpointFormatException(path, name, $"has {dimCount} dimensions");
                var dims = new long[dimCount];
                for (int d = 0; d < dims.Length; d++)
                {
                    ulong dim = cursor.UInt64(name);
                    if (dim is 0 or > int.MaxValue) throw new CheckpointFormatException(path, name, $"dimension {d} is {dim} (must be 1..{int.MaxValue})");
                    dims[d] = (long)dim;
                }
                infos.Add((name, dims, (GgufFormat.TensorType)cursor.UInt32(name), cursor.UInt64(name)));
            }

            long alignment = !metadata.TryGetValue("general.alignment", out var a) ? GgufFormat.DefaultAlignment : a switch
            {
                byte or sbyte or short or ushort or int or uint or long => Convert.ToInt64(a, System.Globalization.CultureInfo.InvariantCulture),
                ulong u => u > long.MaxValue ? -1 : (long)u,
                _ => throw new CheckpointFormatException(path, "general.alignment", $"is a {a.GetType().Name}, not an integer"),
            };
            if (alignment is < 1 or > 1 << 20 || (alignment & (alignment - 1)) != 0)
                throw new CheckpointFormatException(path, "general.alignment", $"{alignment} is not a power of two in [1, 2^20]");
            long dataStart = (cursor.Position + alignment - 1) / alignment * alignment;

            var tensors = new Dictionary<string, WeightTensor>();
            foreach (var (name, dims, ggmlType, offset) in infos)
            {
                // ne[0] is the contiguous dimension: a [out, in] matrix is stored with dims [in, out].
                if (dims.Length > 2 && dims.Skip(2).Any(d => d != 1)) throw new CheckpointFormatException(path, name, "only vectors and matrices are weights");
                int columns = checked((int)dims[0]);
                int rows = dims.Length > 1 ? checked((int)dims[1]) : 1;
                DType type = GgufFormat.ElementType(ggmlType)
                    ?? throw new CheckpointFormatException(path, name, $"ggml type {(uint)ggmlType} is not supported (f32, f16, bf16, q8_0, q4_0, q4_K, q5_K, q6_K)");
                long bytes = type.BytesFor((long)rows * columns);
                // Offsets are unsigned in the file: compare in unsigned arithmetic so no huge value wraps to a negative one.
                ulong available = (ulong)(file.Length - Math.Min(dataStart, file.Length));
                if (offset % (ulong)alignment != 0)
                    throw new CheckpointFormatException(path, name, $"data offset {offset} is not a multiple of the alignment {alignment}");
                if (offset > available || (ulong)bytes > available - offset)
                    throw new CheckpointFormatException(path, name, $"data [{offset}, {offset} + {bytes}) past the data start {dataStart} runs past the end of the file ({file.Length} bytes): truncated?");
                byte* data = file.Pointer + dataStart + (long)offset;
                if (type.IsBlockQuantised() && columns % type.BlockLength() != 0)
                {
                    // Blocks that straddle rows cannot be read row by row: such a tensor is widened once, here.
                    var dequantised = new NativeBuffer<float>((long)rows * columns);
                    owners.Add(dequantised);
                    BlockQuantisation.Dequantise(type, new ReadOnlySpan<byte>(data, checked((int)bytes)), dequantised.Span);
                    tensors[name] = new WeightTensor(name, DType.F32, rows, columns, dequantised.Pointer);
                }
                else
                {
                    if (type == DType.F16) FiniteHalves.Require(path, name, data, (long)rows * columns);
                    if (type.IsBlockQuantised()) BlockQuantisation.RequireFiniteScales(type, path, name, data, bytes / type.BlockBytes());
                    if (type.Interleaved() is DType interleaved && rows % 8 == 0)
                    {
                        // Reordered once so one integer multiply-add serves eight rows (InterleavedRows); the file's pages are not read again.
                        var reordered = new NativeBuffer<byte>(interleaved.BytesFor((long)rows * columns), zeroed: false);
                        owners.Add(reordered);
                        InterleavedRows.Interleave(type, data, rows, columns, reordered.Pointer);
                        file.Release(dataStart + (long)offset, bytes);
                        tensors[name] = new WeightTensor(name, interleaved, rows, columns, reordered.Pointer);
                    }
                    else tensors[name] = new WeightTensor(name, type, rows, columns, data);
                }
            }

            var config = ReadConfig(path, metadata, tensors);
            return CheckpointAssembler.Assemble(path, config, tensors, TensorNames.Gguf, owners);
        }
        catch (Exception e)
        {
            foreach (var owner in owners) owner.Dispose();
            if (e is CheckpointFormatException) throw;
            throw new CheckpointFormatException(path, "file", e.Message, e);
        }
    }

    private static ModelConfig ReadConfig(string path, Dictionary<string, object> metadata, Dictionary<string, WeightTensor> tensors)
    {
        string arch = metadata.TryGetValue("general.architecture", out var archValue) ? archValue as string ?? "" : "";
        if (!GgufFormat.Architectures.Contains(arch))
            throw new CheckpointFormatException(path, "general.architecture", $"'{arch}' is not supported ({string.Join(", ", GgufFormat.Architectures)})");
        long Required(string key) => metadata.TryGetValue(key, out var v) && v is not string and not object[]
            ? Convert.ToInt64(v)
            : throw new CheckpointFormatException(path, key, "is missing");
        // A float32 field is widened through its shortest decimal form, so 1e-5 stays 1e-5 rather than 9.99999975e-6.
        double Real(string key, double fallback) => metadata.TryGetValue(key, out var v)
            ? v is float f ? double.Parse(f.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture) : Convert.ToDouble(v, CultureInfo.InvariantCulture)
            : fallback;

        int hidden = (int)Required($"{arch}.embedding_length");
        int heads = (int)Required($"{arch}.attention.head_count");
        int vocab = metadata.TryGetValue($"{arch}.vocab_size", out var vs) ? Convert.ToInt32(vs)
            : tensors.TryGetValue(TensorNames.Gguf.Embedding, out var embedding) ? embedding.Rows
            : throw new CheckpointFormatException(path, TensorNames.Gguf.Embedding, "tensor is missing");
        return new ModelConfig
        {
            Architecture = arch,
            HiddenSize = hidden,
            IntermediateSize = (int)Required($"{arch}.feed_forward_length"),
            LayerCount = (int)Required($"{arch}.block_count"),
            HeadCount = heads,
            KvHeadCount = metadata.TryGetValue($"{arch}.attention.head_count_kv", out var kv) ? Convert.ToInt32(kv) : heads,
            HeadDim = metadata.TryGetValue($"{arch}.attention.key_length", out var kl) ? Convert.ToInt32(kl) : hidden / heads,
            VocabSize = vocab,
            MaxContextLength = (int)Required($"{arch}.context_length"),
            NormEpsilon = Real($"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
            RopeTheta = Real($"{arch}.rope.freq_base", 10000),
            RopeStyle = GgufFormat.RopeStyleOf(arch),
            TiedEmbeddings = !tensors.ContainsKey(TensorNames.Gguf.Classifier),
            RopeFrequencyFactors = tensors.TryGetValue(RopeFrequenciesTensor, out var factors) ? ReadFactors(factors) : null,
            AttentionBias = tensors.ContainsKey(TensorNames.Gguf.Layer(0, LayerTensor.QueryBias)),
            BosTokenId = metadata.TryGetValue("tokenizer.ggml.bos_token_id", out var bos) ? Convert.ToInt32(bos) : null,
            EosTokenIds = metadata.TryGetValue("tokenizer.ggml.eos_token_id", out var eos) ? [Convert.ToInt32(eos)] : [],
        };
    }

    /// <summary>The tensor of per-frequency RoPE divisors llama.cpp's converter writes for Llama-3 scaling.</summary>
    public const string RopeFrequenciesTensor = "rope_freqs.weight";

    private static RopeFrequencyFactors ReadFactors(WeightTensor tensor)
    {
        var values = new float[tensor.ElementCount];
        tensor.ReadRows(0, tensor.Rows, values);
        return new RopeFrequencyFactors(values.Select(v => (double)v).ToArray()); // checked against head_dim by ModelConfig.Validate
    }

    /// <summary>The metadata of the GGUF file at <paramref name="path"/> (arrays as object[]), without its tensors.</summary>
    public static IReadOnlyDictionary<string, object> ReadMetadata(string path)
    {
        using var file = FileBytes.Map(path);
        return ReadHeader(path, new Cursor(path, file)).Metadata;
    }

    private static (Dictionary<string, object> Metadata, long TensorCount) ReadHeader(string path, Cursor cursor)
    {
        if (cursor.UInt32("magic") != GgufFormat.Magic) throw new CheckpointFormatException(path, "magic", "is not 'GGUF'");
        uint version = cursor.UInt32("version");
        if (version != GgufFormat.Version) throw new CheckpointFormatException(path, "version", $"{version} is not supported (3)");
        long tensorCount = cursor.Count("tensor_count");
        long metadataCount = cursor.Count("metadata_kv_count");
        var metadata = new Dictionary<string, object>();
        for (long i = 0; i < metadataCount; i++)
        {
            string key = cursor.String("metadata key");
            metadata[key] = cursor.Value(key, (GgufFormat.ValueType)cursor.UInt32(key));
        }
        return (metadata, tensorCount);
    }

    /// <summary>Bounds-checked little-endian reads over the file's bytes; running off the end names the field.</summary>
    private sealed class Cursor(string path, FileBytes file)
    {
        public long Position { get; private set; }

        private ReadOnlySpan<byte> Take(string field, long count)
        {
            if (count < 0 || Position + count > file.Length)
                throw new CheckpointFormatException(path, field, $"file is truncated at byte {Position} (needs {count} more of {file.Length})");
            var span = file.Bytes(Position, checked((int)count));
            Position += count;
            return span;
        }

        public uint UInt32(string field) => BinaryPrimitives.ReadUInt32LittleEndian(Take(field, 4));
        public ulong UInt64(string field) => BinaryPrimitives.ReadUInt64LittleEndian(Take(field, 8));

        public long Count(string field)
        {
            ulong value = UInt64(field);
            return value <= int.MaxValue ? (long)value : throw new CheckpointFormatException(path, field, $"implausible count {value}");
        }

        public string String(string field) => Encoding.UTF8.GetString(Take(field, Count(field)));

        public object Value(string key, GgufFormat.ValueType type) => type switch
        {
            GgufFormat.ValueType.UInt8 => Take(key, 1)[0],
            GgufFormat.ValueType.Int8 => (sbyte)Take(key, 1)[0],
            GgufFormat.ValueType.UInt16 => BinaryPrimitives.ReadUInt16LittleEndian(Take(key, 2)),
            GgufFormat.ValueType.Int16 => BinaryPrimitives.ReadInt16LittleEndian(Take(key, 2)),
            GgufFormat.ValueType.UInt32 => UInt32(key),
            GgufFormat.ValueType.Int32 => BinaryPrimitives.ReadInt32LittleEndian(Take(key, 4)),
            GgufFormat.ValueType.Float32 => BinaryPrimitives.ReadSingleLittleEndian(Take(key, 4)),
            GgufFormat.ValueType.Bool => Take(key, 1)[0] != 0,
            GgufFormat.ValueType.String => String(key),
            GgufFormat.ValueType.UInt64 => UInt64(key),
            GgufFormat.ValueType.Int64 => BinaryPrimitives.ReadInt64LittleEndian(Take(key, 8)),
            GgufFormat.ValueType.Float64 => BinaryPrimitives.ReadDoubleLittleEndian(Take(key, 8)),
            GgufFormat.ValueType.Array => Array(key),
            _ => throw new CheckpointFormatException(path, key, $"unknown metadata value type {(uint)type}"),
        };

        private object[] Array(string key)
        {
            var elementType = (GgufFormat.ValueType)UInt32(key);
            long count = Count(key);
            var items = new object[count];
            for (long i = 0; i < count; i++) items[i] = Value(key, elementType);
            return items;
        }
    }
}
