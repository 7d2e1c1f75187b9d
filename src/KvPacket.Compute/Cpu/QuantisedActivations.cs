using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using KvPacket.Core.Memory;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// Activations rounded per block of 32 to int8 with one f32 step each (step = max|x| / 127, levels rounded half to
/// even), as the integer block dots read them, the sums of each 16 levels times their step, and each block's level sum.
/// Per token: <c>Columns</c> sbytes, <c>Columns/32</c> steps, <c>Columns/16</c> sums, <c>Columns/32</c> integer level sums. The buffer grows to the largest batch it has held and is reused, so steady state allocates nothing.
/// </summary>
[SkipLocalsInit]
public sealed unsafe class QuantisedActivations : IDisposable
{
    private NativeBuffer<byte>? _buffer;
    private byte* _base;
    private long _tokenBytes;
    private int _tokens, _columns;

    /// <summary>Columns per token.</summary>
    public int Columns => _columns;

    /// <summary>Bytes one token takes.</summary>
    private static long TokenBytes(int columns) => columns + columns / 32 * 8L + columns / 16 * 4L;

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
        _base = _buffer.Pointer;
        _tokenBytes = TokenBytes(columns);
        for (int t = 0; t < tokens; t++) QuantiseToken(x + (long)t * columns, t);
    }

    /// <summary>Token <paramref name="t"/>'s int8 values.</summary>
    public sbyte* Values(int t) => (sbyte*)Base(t);

    /// <summary>Token <paramref name="t"/>'s step per block of 32.</summary>
    public float* Steps(int t) => (float*)(Base(t) + _columns);

    /// <summary>Token <paramref name="t"/>'s sums per 16 values (Σ q times the block's step).</summary>
    public float* Sums(int t) => (float*)(Base(t) + _columns) + _columns / 32;

    /// <summary>Token <paramref name="t"/>'s Σ q per block of 32, as integers (times the block's step: its sum).</summary>
    public int* LevelSums(int t) => (int*)(Sums(t) + _columns / 16);

    /// <remarks>Read in the kernels' inner loops: the token is checked in debug builds only.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* Base(int t)
    {
        System.Diagnostics.Debug.Assert((uint)t < (uint)_tokens, "token outside the quantised batch");
        return _base + t * _tokenBytes;
    }

    private void QuantiseToken(float* x, int t)
    {
        sbyte* q = Values(t);
        float* steps = Steps(t), sums = Sums(t);
        int* levelSums = LevelSums(t);
        for (int b = 0; b < _columns / 32; b++)
        {
            float* block = x + 32 * b;
            float max = Avx512F.IsSupported ? AbsMax(block) : ScalarAbsMax(block);
            float step = max / 127, inverse = max == 0 ? 0 : 127 / max;
            steps[b] = step;
            int lower, upper;
            if (Avx512F.IsSupported)
            {
                // Round is to nearest even, as MathF.Round; the levels fit a byte, so truncating the int32 lanes is exact.
                var l0 = Vector512.ConvertToInt32(Vector512.Round(Vector512.Load(block) * inverse));
                var l1 = Vector512.ConvertToInt32(Vector512.Round(Vector512.Load(block + 16) * inverse));
                Avx512F.ConvertToVector128SByte(l0).Store(q + 32 * b);
                Avx512F.ConvertToVector128SByte(l1).Store(q + 32 * b + 16);
                lower = Vector512.Sum(l0);
                upper = Vector512.Sum(l1);
            }
            else
            {
                lower = upper = 0;
                for (int i = 0; i < 32; i++)
                {
                    int level = (int)MathF.Round(block[i] * inverse);
                    q[32 * b + i] = (sbyte)level;
                    if (i < 16) lower += level; else upper += level;
                }
            }
            sums[2 * b] = lower * step;
            sums[2 * b + 1] = upper * step;
            levelSums[b] = lower + upper;
        }
    }

    private static float AbsMax(float* block)
    {
        var m = Vector512.Max(Vector512.Abs(Vector512.Load(block)), Vector512.Abs(Vector512.Load(block + 16)));
        var m256 = Vector256.Max(m.GetLower(), m.GetUpper());
        var m128 = Vector128.Max(m256.GetLower(), m256.GetUpper());
        return MathF.Max(MathF.Max(m128[0], m128[1]), MathF.Max(m128[2], m128[3]));
    }

    private static float ScalarAbsMax(float* block)
    {
        float max = 0;
        for (int i = 0; i < 32; i++) max = MathF.Max(max, MathF.Abs(block[i]));
        return max;
    }

    /// <inheritdoc />
    public void Dispose() => _buffer?.Dispose();
}
