// Block-quantised matrices on the GPU, read as the GGUF reader lays them out in memory (InterleavedRows.cs): rows in
// groups of eight, and each 32-value sub-block of a group stored so that 32-bit word (k, i) of a chunk holds row i's
// values. A file's bytes are kept as they are (memory = file size), and every kernel here decodes the same unit, a
// *piece*: one 16-byte load of levels = 4 rows × 8 values (4-bit formats: values 4k..4k+3 in the low nibbles and
// 16+4k..16+4k+3 in the high ones) or 4 rows × 4 values (q8_0: values 4k..4k+3), with each row's value as
// scale · level + offset per half. The formats, per super-block of one row group (FORMAT is 0..4):
//   0 q4_0x8: 8 f16 d | 4 chunks of 32 bytes                                     (144 bytes, 32 values)
//   1 q8_0x8: 8 f16 d | 8 chunks of 32 bytes, each level stored + 128           (272 bytes, 32 values)
//   2 q4_Kx8: 8 f16 d | 8 f16 dmin | 8×8 scale bytes | 8×8 min bytes | 8 sub-blocks of 128 bytes   (1,184 bytes, 256 values)
//   3 q5_Kx8: as q4_Kx8, each sub-block followed by 32 bytes of fifth bits       (1,440 bytes)
//   4 q6_Kx8: 8 f16 d | 16×8 int8 scales | 8 sub-blocks of 128 bytes of low nibbles + 64 of high bit pairs (1,680 bytes)
// Compiled after kernels.cu, in its module: operand_t (the products' operands, bf16 or f32), operand_store and the
// dependent-launch macros are kernels.cu's; the products accumulate in f32.

typedef unsigned char byte_t;

// Per format: values per super-block of a row, bytes of a group's super-block, where sub-block j's levels start and
// their stride, and how many lanes one sub-block takes (a lane per 16 bytes of levels).
template <int F> struct Format;
template <> struct Format<0> { static constexpr int VALUES = 32, BYTES = 144, LEVELS = 16, STRIDE = 0, LANES = 8; };
template <> struct Format<1> { static constexpr int VALUES = 32, BYTES = 272, LEVELS = 16, STRIDE = 0, LANES = 16; };
template <> struct Format<2> { static constexpr int VALUES = 256, BYTES = 1184, LEVELS = 160, STRIDE = 128, LANES = 8; };
template <> struct Format<3> { static constexpr int VALUES = 256, BYTES = 1440, LEVELS = 160, STRIDE = 160, LANES = 8; };
template <> struct Format<4> { static constexpr int VALUES = 256, BYTES = 1680, LEVELS = 144, STRIDE = 192, LANES = 8; };

// One piece decoded: rows 4h..4h+3 of a group, values lo (4k+c) and hi (16+4k+c, 4-bit formats only) of sub-block j;
// row r's value is scale[r][half] · q[r][..] + offset[r][half] (q8_0's offset is folded into its levels).
struct Piece { float q[4][8]; float scale[4][2]; float offset[4][2]; };

// The raw bytes of one piece, loaded before any is decoded (so a lane's loads of several pieces are in flight at once).
struct RawPiece { uint4 levels, extra0, extra1; uint2 d, dmin; unsigned sc0, sc1; };

__device__ __forceinline__ uint4 load_stream(const byte_t* at)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(at));
    return v;
}

// super: the group's super-block; j: the sub-block in it; k: the chunk; h: which four rows.
template <int F>
__device__ __forceinline__ RawPiece load_piece(const byte_t* super, int j, int k, int h)
{
    RawPiece p;
    const byte_t* levels = super + Format<F>::LEVELS + Format<F>::STRIDE * j;
    p.levels = load_stream(levels + 32 * k + 16 * h);
    p.d = __ldg((const uint2*)(super + 8 * h));
    if (F == 2 || F == 3)
    {
        p.dmin = __ldg((const uint2*)(super + 16 + 8 * h));
        p.sc0 = __ldg((const unsigned*)(super + 32 + 8 * j + 4 * h));
        p.sc1 = __ldg((const unsigned*)(super + 96 + 8 * j + 4 * h));
    }
    if (F == 3) p.extra0 = __ldg((const uint4*)(levels + 128 + 16 * h));
    if (F == 4)
    {
        p.sc0 = __ldg((const unsigned*)(super + 16 + 8 * (2 * j) + 4 * h));
        p.sc1 = __ldg((const unsigned*)(super + 16 + 8 * (2 * j + 1) + 4 * h));
        p.extra0 = __ldg((const uint4*)(levels + 128 + 16 * h));
        p.extra1 = __ldg((const uint4*)(levels + 160 + 16 * h));
    }
    return p;
}

__device__ __forceinline__ unsigned word(uint4 v, int r) { return r == 0 ? v.x : r == 1 ? v.y : r == 2 ? v.z : v.w; }
__device__ __forceinline__ float half_at(uint2 v, int r) { return __half2float(__ushort_as_half((unsigned short)((r < 2 ? v.x : v.y) >> (16 * (r & 1))))); }

// Level byte c of `levels` as a float: the byte under the exponent of 2^23 (one byte permute), less 2^23 (exact) — the
// integer-to-float conversion it replaces issues at a quarter of the FMA rate, and decoding set the products' pace.
__device__ __forceinline__ float level(unsigned levels, int c)
{
    return __int_as_float(__byte_perm(levels, 0x4B000000u, 0x7540 + c)) - 8388608.0f;
}

template <int F>
__device__ __forceinline__ void decode_piece(const RawPiece& raw, int k, Piece& p)
{
    #pragma unroll
    for (int r = 0; r < 4; r++)
    {
        unsigned levels = word(raw.levels, r);
        float d = half_at(raw.d, r);
        if (F == 1)
        {
            // Stored + 128: 2^23 + 128 off.
            #pragma unroll
            for (int c = 0; c < 4; c++) p.q[r][c] = __int_as_float(__byte_perm(levels, 0x4B000000u, 0x7540 + c)) - 8388736.0f;
            p.scale[r][0] = d; p.offset[r][0] = p.scale[r][1] = p.offset[r][1] = 0.0f;
            continue;
        }
        // Four values per byte lane at once: low nibbles (4k+c), high nibbles (16+4k+c), and the fifth or fifth-and-sixth bits.
        unsigned lo = levels & 0x0F0F0F0Fu, hi = (levels >> 4) & 0x0F0F0F0Fu;
        if (F == 3)
        {
            unsigned fifth = word(raw.extra0, r);
            lo |= ((fifth >> k) & 0x01010101u) << 4;
            hi |= ((fifth >> (4 + k)) & 0x01010101u) << 4;
        }
        if (F == 4)
        {
            lo |= ((word(raw.extra0, r) >> (2 * k)) & 0x03030303u) << 4;
            hi |= ((word(raw.extra1, r) >> (2 * k)) & 0x03030303u) << 4;
        }
        #pragma unroll
        for (int c = 0; c < 4; c++)
        {
            p.q[r][c] = level(lo, c);
            p.q[r][4 + c] = level(hi, c);
        }
        if (F == 0) { p.scale[r][0] = p.scale[r][1] = d; p.offset[r][0] = p.offset[r][1] = -8.0f * d; }
        if (F == 2 || F == 3)
        {
            float s = d * (float)((raw.sc0 >> (8 * r)) & 0xFF), m = half_at(raw.dmin, r) * (float)((raw.sc1 >> (8 * r)) & 0xFF);
            p.scale[r][0] = p.scale[r][1] = s;
            p.offset[r][0] = p.offset[r][1] = -m;
        }
        if (F == 4)
        {
            float s0 = d * (float)(signed char)((raw.sc0 >> (8 * r)) & 0xFF), s1 = d * (float)(signed char)((raw.sc1 >> (8 * r)) & 0xFF);
            p.scale[r][0] = s0; p.offset[r][0] = -32.0f * s0;
            p.scale[r][1] = s1; p.offset[r][1] = -32.0f * s1;
        }
    }
}

#define QGEMV_TOKENS 8
#define QGEMV_BATCH 4   // iterations whose loads a lane issues before decoding any

#ifdef OPERAND_BF16
// Four consecutive operands as floats.
__device__ __forceinline__ float4 operand_load4(const operand_t* at)
{
    uint2 bits = __ldg((const uint2*)at);
    float2 a = __bfloat1622float2(*(const __nv_bfloat162*)&bits.x), b = __bfloat1622float2(*(const __nv_bfloat162*)&bits.y);
    return make_float4(a.x, a.y, b.x, b.y);
}
#else
__device__ __forceinline__ float4 operand_load4(const operand_t* at) { return __ldg((const float4*)at); }
#endif

// y[t · y_stride + row] (=, or += with accumulate) Σ_c W[row][c] · x[t][c] for t < tokens (≤ TOKENS: 1 for a batch-1
// decode step, whose accumulators then take fewer registers, else QGEMV_TOKENS), W [groups · 8 rows][cols] in format F,
// x [tokens][cols] of operand_t: the levels are decoded to floats and multiply the activations as they are (the same
// arithmetic as the matrix dequantised to f32; rounding the activations to int8 for integer dot products measured no
// faster on the H200 and makes a one-ulp difference upstream flip levels: benchmarks/gpu/NOTES.md). A block is 8 warps;
// warps_per_group (1, 2, 4 or 8) of them share a group of eight rows, taking its iterations in turn (an iteration is
// 32 / LANES sub-blocks, a lane per piece). Each lane sums four rows for every token; lanes of one half of the group
// meet by shuffles, the warps of a group in shared memory in a fixed order.
template <int F, int TOKENS>
__device__ __forceinline__ void quantised_gemv(const byte_t* w, const operand_t* x, float* y, int groups, int cols, int tokens, int accumulate,
    int warps_per_group, int y_stride)
{
    typedef Format<F> Fm;
    __shared__ float partial[8][8][TOKENS];   // [warp][row of the group][token]
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int group = blockIdx.x * (8 / warps_per_group) + warp / warps_per_group, part = warp % warps_per_group;
    constexpr int SUBS = 32 / Fm::LANES, SUBS_PER_SUPER = Fm::VALUES / 32;
    int sub_in_iteration = lane / Fm::LANES, u = lane % Fm::LANES, k = u >> 1, h = u & 1;
    int subs = cols / 32, iterations = (subs + SUBS - 1) / SUBS;
    const byte_t* base = w + (long)group * (cols / Fm::VALUES) * Fm::BYTES;
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    float acc[TOKENS][4];
    #pragma unroll
    for (int t = 0; t < TOKENS; t++)
        #pragma unroll
        for (int r = 0; r < 4; r++) acc[t][r] = 0.0f;
    if (group < groups)
        for (int first = part; first < iterations; first += QGEMV_BATCH * warps_per_group)
        {
            RawPiece raw[QGEMV_BATCH];
            int sub[QGEMV_BATCH];
            #pragma unroll
            for (int b = 0; b < QGEMV_BATCH; b++)
            {
                int iteration = first + b * warps_per_group;
                sub[b] = iteration < iterations ? iteration * SUBS + sub_in_iteration : subs;
                if (sub[b] < subs) raw[b] = load_piece<F>(base + (long)(sub[b] / SUBS_PER_SUPER) * Fm::BYTES, sub[b] % SUBS_PER_SUPER, k, h);
            }
            #pragma unroll
            for (int b = 0; b < QGEMV_BATCH; b++)
            {
                if (sub[b] >= subs) continue;
                Piece p;
                decode_piece<F>(raw[b], k, p);
                int column = 32 * sub[b] + 4 * k;
                #pragma unroll
                for (int t = 0; t < TOKENS; t++)
                {
                    if (t >= tokens) break;
                    float4 lo = operand_load4(x + (long)t * cols + column);
                    float sum_lo = lo.x + lo.y + lo.z + lo.w;
                    float4 hi = make_float4(0, 0, 0, 0);
                    float sum_hi = 0.0f;
                    if (F != 1) { hi = operand_load4(x + (long)t * cols + column + 16); sum_hi = hi.x + hi.y + hi.z + hi.w; }
                    #pragma unroll
                    for (int r = 0; r < 4; r++)
                    {
                        float dot_lo = p.q[r][0] * lo.x + p.q[r][1] * lo.y + p.q[r][2] * lo.z + p.q[r][3] * lo.w;
                        float v = p.scale[r][0] * dot_lo + p.offset[r][0] * sum_lo;
                        if (F != 1)
                        {
                            float dot_hi = p.q[r][4] * hi.x + p.q[r][5] * hi.y + p.q[r][6] * hi.z + p.q[r][7] * hi.w;
                            v += p.scale[r][1] * dot_hi + p.offset[r][1] * sum_hi;
                        }
                        acc[t][r] += v;
                    }
                }
            }
        }
    // Lanes of one half (same h = lane & 1) hold the same four rows: sum them, then lane h writes rows 4h..4h+3.
    #pragma unroll
    for (int t = 0; t < TOKENS; t++)
        #pragma unroll
        for (int r = 0; r < 4; r++)
        {
            float s = acc[t][r];
            for (int offset = 16; offset > 1; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
            acc[t][r] = s;
        }
    if (lane < 2)
        #pragma unroll
        for (int t = 0; t < TOKENS; t++)
            #pragma unroll
            for (int r = 0; r < 4; r++) partial[warp][4 * lane + r][t] = acc[t][r];
    __syncthreads();
    // The group's first warp: lane (row of the group, token) sums the group's warps in order.
    if (part != 0 || group >= groups) return;
    for (int i = lane; i < 8 * tokens; i += 32)
    {
        int row = i & 7, t = i >> 3;
        float sum = 0.0f;
        for (int p = 0; p < warps_per_group; p++) sum += partial[warp + p][row][t];
        long at = (long)t * y_stride + 8L * group + row;
        y[at] = accumulate ? y[at] + sum : sum;
    }
}

// out[row][c] (operand_t, rows [8 · first_group, 8 · (first_group + groups)) of W, written from out's row 0) = W[row][c]:
// a thread per piece, so a group's pieces are read at the width the products read them.
template <int F>
__device__ __forceinline__ void quantised_rows(const byte_t* w, int cols, int first_group, int groups, operand_t* out)
{
    typedef Format<F> Fm;
    constexpr int SUBS_PER_SUPER = Fm::VALUES / 32;
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    int subs = cols / 32;
    long pieces = (long)groups * subs * Fm::LANES;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < pieces; i += (long)gridDim.x * blockDim.x)
    {
        int u = (int)(i % Fm::LANES), k = u >> 1, h = u & 1;
        long rest = i / Fm::LANES;
        int sub = (int)(rest % subs), group = (int)(rest / subs);
        const byte_t* super = w + (long)(first_group + group) * (cols / Fm::VALUES) * Fm::BYTES + (long)(sub / SUBS_PER_SUPER) * Fm::BYTES;
        Piece p;
        decode_piece<F>(load_piece<F>(super, sub % SUBS_PER_SUPER, k, h), k, p);
        #pragma unroll
        for (int r = 0; r < 4; r++)
        {
            operand_t* row = out + (long)(8 * group + 4 * h + r) * cols + 32 * sub + 4 * k;
            #pragma unroll
            for (int c = 0; c < 4; c++)
            {
                row[c] = operand_store(p.scale[r][0] * p.q[r][c] + p.offset[r][0]);
                if (F != 1) row[16 + c] = operand_store(p.scale[r][1] * p.q[r][4 + c] + p.offset[r][1]);
            }
        }
    }
}

// x[token] = row ids[token] of the quantised table (f32), or row −1 − id of soft for a negative id (a soft token); one
// block per token, a thread per piece of the row's half of its group (the other half's rows are decoded and dropped).
template <int F>
__device__ __forceinline__ void quantised_embed(const byte_t* table, int cols, const int* ids, const float* soft, float* x)
{
    typedef Format<F> Fm;
    constexpr int SUBS_PER_SUPER = Fm::VALUES / 32, KS = Fm::LANES / 2;
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    int id = ids[blockIdx.x];
    float* out = x + (long)blockIdx.x * cols;
    if (id < 0)
    {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) out[i] = soft[(long)(-1 - id) * cols + i];
        return;
    }
    int group = id >> 3, h = (id >> 2) & 1, r = id & 3;
    const byte_t* base = table + (long)group * (cols / Fm::VALUES) * Fm::BYTES;
    for (int i = threadIdx.x; i < (cols / 32) * KS; i += blockDim.x)
    {
        int sub = i / KS, k = i % KS;
        Piece p;
        decode_piece<F>(load_piece<F>(base + (long)(sub / SUBS_PER_SUPER) * Fm::BYTES, sub % SUBS_PER_SUPER, k, h), k, p);
        #pragma unroll
        for (int c = 0; c < 4; c++)
        {
            out[32 * sub + 4 * k + c] = p.scale[r][0] * p.q[r][c] + p.offset[r][0];
            if (F != 1) out[32 * sub + 16 + 4 * k + c] = p.scale[r][1] * p.q[r][4 + c] + p.offset[r][1];
        }
    }
}

#define QUANTISED_KERNELS(NAME, F) \
extern "C" __global__ void __launch_bounds__(256) gemv_##NAME(const byte_t* w, const operand_t* x, float* y, int groups, int cols, int tokens, \
    int accumulate, int warps_per_group, int y_stride) \
{ quantised_gemv<F, QGEMV_TOKENS>(w, x, y, groups, cols, tokens, accumulate, warps_per_group, y_stride); } \
extern "C" __global__ void __launch_bounds__(256) gemv1_##NAME(const byte_t* w, const operand_t* x, float* y, int groups, int cols, int tokens, \
    int accumulate, int warps_per_group, int y_stride) \
{ quantised_gemv<F, 1>(w, x, y, groups, cols, 1, accumulate, warps_per_group, y_stride); } \
extern "C" __global__ void rows_##NAME(const byte_t* w, int cols, int first_group, int groups, operand_t* out) \
{ quantised_rows<F>(w, cols, first_group, groups, out); } \
extern "C" __global__ void embed_##NAME(const byte_t* table, int cols, const int* ids, const float* soft, float* x) \
{ quantised_embed<F>(table, cols, ids, soft, x); }

QUANTISED_KERNELS(q4_0x8, 0)
QUANTISED_KERNELS(q8_0x8, 1)
QUANTISED_KERNELS(q4_kx8, 2)
QUANTISED_KERNELS(q5_kx8, 3)
QUANTISED_KERNELS(q6_kx8, 4)

// out[t][c] = silu(gate) · up from a product whose rows are [gate (width) | up (width)] (the quantised gate and up
// matrices are not interleaved): gate_up [tokens][2 · width], count = tokens · width.
extern "C" __global__ void swiglu_halves(const float* gate_up, operand_t* out, int width, long count)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x)
    {
        long t = i / width, c = i % width;
        float g = gate_up[t * 2 * width + c], u = gate_up[t * 2 * width + width + c];
        out[i] = operand_store(g / (1.0f + expf(-g)) * u);
    }
}
