using System.Runtime.InteropServices;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Tests;

/// <summary>Copies a loaded tensor into a writer's input (f32), so tests can rewrite checkpoints.</summary>
internal static class TensorCopy
{
    public static TensorToWrite AsF32(WeightTensor tensor)
    {
        var data = new float[tensor.ElementCount];
        tensor.ReadRows(0, tensor.Rows, data);
        long[] shape = tensor.Name.Contains("norm") || tensor.Name.EndsWith(".bias") ? [tensor.Columns] : [tensor.Rows, tensor.Columns];
        return new TensorToWrite(tensor.Name, DType.F32, shape, stream => stream.Write(MemoryMarshal.AsBytes(data.AsSpan())));
    }
}
