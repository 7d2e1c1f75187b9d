using System.Runtime.CompilerServices;
using KvPacket.Core.Memory;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// Activations rounded per block of 32 to int8 with one f32 step each (step = max|x| / 127), as the integer block dots
/// read them, and each 16 values' sum times its step. Per token: <c>Columns</c> sbytes, <c>Columns/32</c> steps,
/// <c>Columns/16</c> sums. The buffer grows to the largest batch it has held and is reused, so steady state allocates nothing.
/// </summary>
[SkipLocalsInit]
public sealed unsafe class QuantisedActivations : IDisposable
{
    private NativeBuffer<byte>? _buffer;
    private int _tokens, _columns;

    /// <summary>Columns per token.</summary>
    public int Columns => _columns;

    /// <summary>Bytes one token takes.</summary>
    private static long TokenBytes(int columns) => columns + columns / 32 * 4L + columns / 16 * 4L;

    /// <summary>Rounds <paramref name="tokens"/> rows of <paramref name="x"/> (<paramref name="columns"/> each, a multiple of 32).</summary>
    public void Quantise(float* x, int tokens, int columns)
    {
        if (columns % 32 != 0) throw new ArgumentException($"{columns} columns are not whole blocks of 32.", nameof(columns));
        long bytes = tokens * TokenBytes(columns);
        if (_buffer is null || _buffer.Length < bytes)
        {
            _buffer?.Dispose();
            _buffer = new NativeBuffer<byte>(bytes);
        }
        _tokens = tokens;
        _columns = columns;
        for (int t = 0; t < tokens; t++) QuantiseToken(x + (long)t * columns, t);
    }

    /// <summary>Token <paramref name="t"/>'s int8 values.</summary>
    public sbyte* Values(int t) => (sbyte*)Base(t);

    /// <summary>Token <paramref name="t"/>'s step per block of 32.</summary>
    public float* Steps(int t) => (float*)(Base(t) + _columns);

    /// <summary>Token <paramref name="t"/>'s sums per 16 values (Σ q times the block's step).</summary>
    public float* Sums(int t) => (float*)(Base(t) + _columns) + _columns / 32;

    private byte* Base(int t) => (uint)t < (uint)_tokens
        ? _buffer!.Pointer + t * TokenBytes(_columns)
        : throw new ArgumentOutOfRangeException(nameof(t));

    private void QuantiseToken(float* x, int t)
    {
        sbyte* q = Values(t);
        float* steps = Steps(t), sums = Sums(t);
        for (int b = 0; b < _columns / 32; b++)
        {
            float* block = x + 32 * b;
            float max = 0;
            for (int i = 0; i < 32; i++) max = MathF.Max(max, MathF.Abs(block[i]));
            float step = max / 127, inverse = max == 0 ? 0 : 127 / max;
            steps[b] = step;
            for (int half = 0; half < 2; half++)
            {
                int sum = 0;
                for (int i = 16 * half; i < 16 * half + 16; i++)
                {
                    int level = (int)MathF.Round(block[i] * inverse);
                    q[32 * b + i] = (sbyte)level;
                    sum += level;
                }
                sums[2 * b + half] = sum * step;
            }
        }
    }

    /// <inheritdoc />
    public void Dispose() => _buffer?.Dispose();
}
