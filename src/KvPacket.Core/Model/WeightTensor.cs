using KvPacket.Core.Memory;

namespace KvPacket.Core.Model;

/// <summary>
/// A read-only view of one weight tensor in native memory (a loaded file, see <see cref="FileBytes"/>, or a <see cref="NativeBuffer{T}"/>).
/// Matrices are row-major <c>[Rows, Columns]</c> = <c>[out_features, in_features]</c>; vectors have one row.
/// The view does not own its memory: the checkpoint that produced it does.
/// </summary>
public readonly unsafe struct WeightTensor
{
    /// <summary>Creates a view over <paramref name="data"/>.</summary>
    public WeightTensor(string name, DType type, int rows, int columns, void* data)
    {
        Name = name;
        Type = type;
        Rows = rows;
        Columns = columns;
        Data = data;
    }

    /// <summary>Tensor name in the checkpoint it came from.</summary>
    public string Name { get; }

    /// <summary>Element type.</summary>
    public DType Type { get; }

    /// <summary>Number of rows (output features); 1 for a vector.</summary>
    public int Rows { get; }

    /// <summary>Number of columns (input features), or the length of a vector.</summary>
    public int Columns { get; }

    /// <summary>Address of element [0, 0].</summary>
    public void* Data { get; }

    /// <summary>Whether this view points anywhere.</summary>
    public bool IsPresent => Data != null;

    /// <summary>Total elements.</summary>
    public long ElementCount => (long)Rows * Columns;

    /// <summary>Bytes of the tensor's data.</summary>
    public long ByteCount => Type.BytesFor(ElementCount);

    /// <summary>Row <paramref name="row"/> widened to f32 into <paramref name="destination"/>.</summary>
    public void ReadRow(int row, Span<float> destination) => ReadRows(row, 1, destination);

    /// <summary>Rows [<paramref name="row"/>, row + <paramref name="count"/>) widened to f32 into <paramref name="destination"/>.</summary>
    public void ReadRows(int row, int count, Span<float> destination)
    {
        if (row < 0 || count < 0 || row + count > Rows)
            throw new ArgumentOutOfRangeException(nameof(row), $"Rows [{row}, {row + count}) of '{Name}' with {Rows} rows.");
        long offset = (long)row * Columns;
        int length = checked(count * Columns);
        switch (Type)
        {
            case DType.F32: new ReadOnlySpan<float>((float*)Data + offset, length).CopyTo(destination); break;
            case DType.F16: ElementConversion.HalfToSingle(new ReadOnlySpan<Half>((Half*)Data + offset, length), destination); break;
            case DType.BF16: ElementConversion.BF16ToSingle(new ReadOnlySpan<ushort>((ushort*)Data + offset, length), destination); break;
            case DType.Q4_0x8 or DType.Q4_Kx8 or DType.Q5_Kx8 or DType.Q8_0x8 or DType.Q6_Kx8:
                for (int i = 0; i < count; i++) Checkpoints.InterleavedRows.ReadRow(Type, (byte*)Data, row + i, Columns, destination.Slice(i * Columns, Columns));
                break;
            case var block when block.IsBlockQuantised():
                long rowBytes = Type.BytesFor(Columns);
                Checkpoints.BlockQuantisation.Dequantise(Type, new ReadOnlySpan<byte>((byte*)Data + row * rowBytes, checked((int)(count * rowBytes))), destination[..length]);
                break;
            default: throw new NotSupportedException($"Tensor '{Name}' has type {Type}, which is not read here.");
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"{Name} {Type}[{Rows}, {Columns}]";
}
