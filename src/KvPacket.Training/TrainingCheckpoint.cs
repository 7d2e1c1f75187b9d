using KvPacket.Core.Storage;
using System.Text;

namespace KvPacket.Training;

/// <summary>
/// The whole state of a distillation run at a step — adapter, optimiser moments, the best adapter so far and the
/// early-stopping count — so a resumed run continues exactly as if it had never stopped (the example order is a
/// function of the seed and the step). Saved as one file: magic, format version, a signature of the settings and the
/// model (a resume with other settings or another model is refused) and the arrays, as a <see cref="ChecksummedFile"/>
/// (a crash leaves the old or the new state; damage is detected).
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
        ChecksummedFile.Write(path, buffer.GetBuffer().AsSpan(0, (int)buffer.Length));
    }

    /// <summary>Reads a state written by <see cref="Save"/>.</summary>
    /// <exception cref="InvalidDataException">The file is not a training checkpoint, is of another format version, or is damaged.</exception>
    public static TrainingCheckpoint Load(string path)
    {
        byte[] bytes = ChecksummedFile.TryRead(path) ?? throw new InvalidDataException($"{path}: training checkpoint checksum mismatch (the file is damaged).");
        if (bytes.Length < Magic.Length + 4 || !bytes.AsSpan(0, Magic.Length).SequenceEqual(Magic))
            throw new InvalidDataException($"{path}: not a training checkpoint (bad magic).");
        using var reader = new BinaryReader(new MemoryStream(bytes), Encoding.UTF8);
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
