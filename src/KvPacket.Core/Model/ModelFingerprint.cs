using System.Buffers.Binary;
using System.Globalization;
using System.IO.Hashing;
using System.Text;

namespace KvPacket.Core.Model;

/// <summary>
/// The identity of a model: a 128-bit hash of its shape (every <see cref="ModelConfig"/> field that changes the KV
/// cache) and of every weight tensor's name, type, shape and bytes. Two checkpoints share a fingerprint only if they
/// compute the same KV, so a stored packet can never be attached to a different model.
/// </summary>
public readonly record struct ModelFingerprint(UInt128 Value)
{
    /// <summary>Fingerprints <paramref name="checkpoint"/> (reads every weight byte once).</summary>
    public static unsafe ModelFingerprint Of(Checkpoint checkpoint)
    {
        var hash = new XxHash128();
        var c = checkpoint.Config;
        string shape = string.Create(CultureInfo.InvariantCulture,
            $"{c.Architecture}|{c.HiddenSize}|{c.IntermediateSize}|{c.LayerCount}|{c.HeadCount}|{c.KvHeadCount}|{c.HeadDim}|{c.VocabSize}|{c.MaxContextLength}|{c.NormEpsilon:R}|{c.RopeTheta:R}|{c.RopeScaling}|{c.RopeStyle}|{c.TiedEmbeddings}|{c.AttentionBias}");
        // Appended only when present, so every fingerprint made before the field existed stays the same.
        if (c.RopeFrequencyFactors is { } factors) shape += "|" + factors;
        hash.Append(Encoding.UTF8.GetBytes(shape));
        Append(hash, checkpoint.TokenEmbedding);
        foreach (var layer in checkpoint.Layers)
        {
            Append(hash, layer.AttentionNorm);
            foreach (var matrix in layer.Matrices) Append(hash, matrix);
            Append(hash, layer.QueryBias);
            Append(hash, layer.KeyBias);
            Append(hash, layer.ValueBias);
            Append(hash, layer.FfnNorm);
        }
        Append(hash, checkpoint.FinalNorm);
        Append(hash, checkpoint.Classifier);
        return new ModelFingerprint(hash.GetCurrentHashAsUInt128());
    }

    private static unsafe void Append(XxHash128 hash, WeightTensor tensor)
    {
        if (!tensor.IsPresent) return;
        Span<byte> meta = stackalloc byte[12];
        BinaryPrimitives.WriteInt32LittleEndian(meta, (int)tensor.Type);
        BinaryPrimitives.WriteInt32LittleEndian(meta[4..], tensor.Rows);
        BinaryPrimitives.WriteInt32LittleEndian(meta[8..], tensor.Columns);
        hash.Append(Encoding.UTF8.GetBytes(tensor.Name));
        hash.Append(meta);
        byte* data = (byte*)tensor.Data;
        for (long done = 0, total = tensor.ByteCount; done < total;)
        {
            int chunk = (int)Math.Min(total - done, 1 << 30);
            hash.Append(new ReadOnlySpan<byte>(data + done, chunk));
            done += chunk;
        }
    }

    /// <summary>32 lowercase hex digits.</summary>
    public override string ToString() => Value.ToString("x32", CultureInfo.InvariantCulture);
}
