using System.IO.Hashing;
using System.Text;

namespace KvPacket.Training;

/// <summary>
/// The whole state of a distillation run at a step — adapter, optimiser moments, the best adapter so far and the
/// early-stopping count — so a resumed run continues exactly as if it had never stopped (the example order is a
/// function of the seed and the step). Saved as one file: magic, format version, a signature of the settings and the
/// model (a resume with other settings or another model is refused), the arrays, and an xxHash64 of everything
/// before it; written to a temporary file, flushed to disk and renamed, so a crash leaves the old or the new state.
/// </summary>
internal sealed record TrainingCheckpoint(string Signature, int Step, float[] Parameters, int OptimiserSteps, double[] FirstMoments, double[] SecondMoments,
    float[] BestParameters, double InitialHeldOutKl, double BestHeldOutKl, int BestStep, int EvaluationsSinceBest)
{
    private static ReadOnlySpan<byte> Magic => "KVPTRAIN"u8;
    private const int FormatVersion = 1;

    /// <summary>Writes the state to <paramref name="path"/> atomically.</summary>
    public void Save(string path)
    {
        using var buffer = new MemoryStream();
        using (var writer = new BinaryWriter(buffer, Encoding.UTF8, leaveOpen: true))
        {
            writer.Write(Magic);
            writer.Write(FormatVersion);
            writer.Write(Signature);
            writer.Write(Step);
            Write(writer, Parameters);
            writer.Write(OptimiserSteps);
            Write(writer, FirstMoments);
            Write(writer, SecondMoments);
            Write(writer, BestParameters);
            writer.Write(InitialHeldOutKl);
            writer.Write(BestHeldOutKl);
            writer.Write(BestStep);
            writer.Write(EvaluationsSinceBest);
        }
        buffer.Write(BitConverter.GetBytes(XxHash64.HashToUInt64(buffer.GetBuffer().AsSpan(0, (int)buffer.Length))));
        string temporary = path + ".tmp";
        using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            buffer.Position = 0;
            buffer.CopyTo(file);
            file.Flush(flushToDisk: true);
        }
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>Reads a state written by <see cref="Save"/>.</summary>
    /// <exception cref="InvalidDataException">The file is not a training checkpoint, is of another format version, or is damaged.</exception>
    public static TrainingCheckpoint Load(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < Magic.Length + 12 || !bytes.AsSpan(0, Magic.Length).SequenceEqual(Magic))
            throw new InvalidDataException($"{path}: not a training checkpoint (bad magic).");
        int body = bytes.Length - sizeof(ulong);
        if (XxHash64.HashToUInt64(bytes.AsSpan(0, body)) != BitConverter.ToUInt64(bytes, body))
            throw new InvalidDataException($"{path}: training checkpoint checksum mismatch (the file is damaged).");
        using var reader = new BinaryReader(new MemoryStream(bytes, 0, body), Encoding.UTF8);
        reader.ReadBytes(Magic.Length);
        int version = reader.ReadInt32();
        if (version != FormatVersion) throw new InvalidDataException($"{path}: training checkpoint format version {version}, this build reads {FormatVersion}.");
        return new TrainingCheckpoint(reader.ReadString(), reader.ReadInt32(), ReadFloats(reader), reader.ReadInt32(), ReadDoubles(reader), ReadDoubles(reader),
            ReadFloats(reader), reader.ReadDouble(), reader.ReadDouble(), reader.ReadInt32(), reader.ReadInt32());
    }

    private static void Write(BinaryWriter writer, float[] values)
    {
        writer.Write(values.Length);
        foreach (float v in values) writer.Write(v);
    }

    private static void Write(BinaryWriter writer, double[] values)
    {
        writer.Write(values.Length);
        foreach (double v in values) writer.Write(v);
    }

    private static float[] ReadFloats(BinaryReader reader)
    {
        var values = new float[reader.ReadInt32()];
        for (int i = 0; i < values.Length; i++) values[i] = reader.ReadSingle();
        return values;
    }

    private static double[] ReadDoubles(BinaryReader reader)
    {
        var values = new double[reader.ReadInt32()];
        for (int i = 0; i < values.Length; i++) values[i] = reader.ReadDouble();
        return values;
    }
}
