using KvPacket.Core.Memory;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// A tensor for a checkpoint writer: its name, type and shape (outermost dimension first), and a callback
/// that streams exactly its bytes, so multi-gigabyte checkpoints are written without holding them in memory.
/// </summary>
public sealed record TensorToWrite(string Name, DType Type, long[] Shape, Action<Stream> WriteData)
{
    /// <summary>Bytes the callback must write.</summary>
    public long ByteCount => Type.BytesFor(Shape.Aggregate(1L, (a, b) => a * b));

    /// <summary>Runs the callback and checks that it wrote <see cref="ByteCount"/> bytes.</summary>
    public void WriteTo(Stream stream)
    {
        long start = stream.Position;
        WriteData(stream);
        long written = stream.Position - start;
        if (written != ByteCount) throw new InvalidOperationException($"Tensor '{Name}' wrote {written} bytes, expected {ByteCount}.");
    }
}
