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

#ifdef OPERAND_BF16
// Steps of more tokens than QGEMV_TOKENS, with bf16 operands: the tensor cores multiply the decoded levels straight
// from registers. A piece decoded by lane (g, q) of a warp is, with the columns of each 16-column half permuted (a dot
// product does not care in which order its columns are summed, so the activations are read in the same order), that
// lane's share of four mma.sync m16n8k16 A fragments: rows 4g + 2m and 4g + 2m + 1 of a unit of 32 rows (4 groups; the
// lane's piece is group g / 2, rows 4·(g % 2)..+3, chunk q) for m = 0, 1, by columns 4q..4q+3 of each half of a
// sub-block (q8_0: a second piece, chunk q + 4, is the second half). Its B fragment is then 8 contiguous bytes of one
// token's activations. A warp takes every 8th sub-block of its block's column split, IN_FLIGHT sub-blocks' loads issued
// before any is decoded, and a sub-block's activations asked for before its piece is decoded (waiting on them just
// before each mma.sync: 2.4 ms a batch-32 Llama-3.2-1B Q4_K step on the H200, 1.7 this way); the 8 warps' sums meet in
// shared memory in a fixed order, and with several splits (units with long rows) the block writes them to `partials`
// ([tile][split][QMMA_TOKENS][QMMA_ROWS]) and the last block of a tile to finish adds the splits in order:
// deterministic, one launch. Weights are rounded to bf16 as the dequantised cuBLAS path rounds them. grid (units,
// splits, token tiles), block 256 threads; counters: a zero per tile.
#define QMMA_ROWS 32
#define QMMA_TOKENS 32
#define QMMA_WARPS 8

__device__ __forceinline__ void mma_bf16_16816(float* d, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16x2(float low, float high)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(low, high);
    return *(unsigned*)&v;
}

// Half `half` (0: columns 4q..4q+3 of the sub-block, 1: 16 + 4q..) of a decoded piece as the A fragments of its two
// row pairs: a[m] holds rows 2m, 2m + 1 of the piece.
__device__ __forceinline__ void piece_fragments(const Piece& p, int half, unsigned a[2][4])
{
    #pragma unroll
    for (int m = 0; m < 2; m++)
    {
        float v[2][4];
        #pragma unroll
        for (int i = 0; i < 2; i++)
            #pragma unroll
            for (int c = 0; c < 4; c++) v[i][c] = p.scale[2 * m + i][half] * p.q[2 * m + i][4 * half + c] + p.offset[2 * m + i][half];
        a[m][0] = pack_bf16x2(v[0][0], v[0][1]);
        a[m][1] = pack_bf16x2(v[1][0], v[1][1]);
        a[m][2] = pack_bf16x2(v[0][2], v[0][3]);
        a[m][3] = pack_bf16x2(v[1][2], v[1][3]);
    }
}

template <int F>
__device__ __forceinline__ void quantised_mma(const byte_t* w, const operand_t* x, float* y, int groups, int cols, int tokens, int accumulate,
    int y_stride, int subs_per_split, float* partials, int* counters)
{
    typedef Format<F> Fm;
    constexpr int SUBS_PER_SUPER = Fm::VALUES / 32, PIECES = F == 1 ? 2 : 1, IN_FLIGHT = F == 0 || F == 2 ? 4 : 2;
    __shared__ float sums[QMMA_WARPS][QMMA_TOKENS][QMMA_ROWS];
    __shared__ bool last_block;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    int first_token = blockIdx.z * QMMA_TOKENS, tile_tokens = min(QMMA_TOKENS, tokens - first_token), tiles_n = (tile_tokens + 7) / 8;
    int subs = cols / 32, begin = blockIdx.y * subs_per_split, end = min(subs, begin + subs_per_split);
    int group = blockIdx.x * (QMMA_ROWS / 8) + (g >> 1), h = g & 1;
    bool present = group < groups;
    const byte_t* base = w + (long)group * (cols / Fm::VALUES) * Fm::BYTES;
    const operand_t* x_row[QMMA_TOKENS / 8];
    #pragma unroll
    for (int n = 0; n < QMMA_TOKENS / 8; n++) x_row[n] = x + (long)(first_token + min(8 * n + g, tile_tokens - 1)) * cols + 4 * q;
    float acc[2][QMMA_TOKENS / 8][4];
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int n = 0; n < QMMA_TOKENS / 8; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    for (int first = begin + warp; first < end; first += QMMA_WARPS * IN_FLIGHT)
    {
        RawPiece raw[IN_FLIGHT][PIECES];
        #pragma unroll
        for (int b = 0; b < IN_FLIGHT; b++)
        {
            int sub = first + QMMA_WARPS * b;
            if (present && sub < end)
                #pragma unroll
                for (int i = 0; i < PIECES; i++) raw[b][i] = load_piece<F>(base + (long)(sub / SUBS_PER_SUPER) * Fm::BYTES, sub % SUBS_PER_SUPER, q + 4 * i, h);
        }
        #pragma unroll
        for (int b = 0; b < IN_FLIGHT; b++)
        {
            int sub = first + QMMA_WARPS * b;
            if (sub >= end) break;
            // The activations first: their loads are in flight while the piece is decoded.
            uint2 bv[QMMA_TOKENS / 8][2];
            #pragma unroll
            for (int n = 0; n < QMMA_TOKENS / 8; n++)
                #pragma unroll
                for (int half = 0; half < 2; half++)
                    bv[n][half] = n < tiles_n && 8 * n + g < tile_tokens ? __ldg((const uint2*)(x_row[n] + 32 * sub + 16 * half)) : make_uint2(0, 0);
            unsigned a[2][2][4];   // [half][m]
            if (present)
            {
                Piece p;
                decode_piece<F>(raw[b][0], q, p);
                piece_fragments(p, 0, a[0]);
                if (F == 1)
                {
                    decode_piece<F>(raw[b][PIECES - 1], q + 4, p);
                    piece_fragments(p, 0, a[1]);
                }
                else piece_fragments(p, 1, a[1]);
            }
            else
                #pragma unroll
                for (int i = 0; i < 16; i++) (&a[0][0][0])[i] = 0u;
            #pragma unroll
            for (int n = 0; n < QMMA_TOKENS / 8; n++)
            {
                if (n >= tiles_n) break;
                #pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    mma_bf16_16816(acc[0][n], a[half][0], bv[n][half].x, bv[n][half].y);
                    mma_bf16_16816(acc[1][n], a[half][1], bv[n][half].x, bv[n][half].y);
                }
            }
        }
    }

    // acc[m][n][e]: row 4g + 2m + (e >> 1) of the unit, token 8n + 2q + (e & 1) of the tile; the warps summed in order.
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int n = 0; n < QMMA_TOKENS / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) sums[warp][8 * n + 2 * q + (e & 1)][4 * g + 2 * m + (e >> 1)] = acc[m][n][e];
    __syncthreads();
    int first_row = blockIdx.x * QMMA_ROWS, rows = 8 * groups;
    int tile = blockIdx.z * gridDim.x + blockIdx.x;
    float* own = partials + ((long)tile * gridDim.y + blockIdx.y) * (QMMA_TOKENS * QMMA_ROWS);
    for (int i = threadIdx.x; i < tile_tokens * QMMA_ROWS; i += blockDim.x)
    {
        int t = i / QMMA_ROWS, r = i % QMMA_ROWS;
        float sum = 0.0f;
        #pragma unroll
        for (int v = 0; v < QMMA_WARPS; v++) sum += sums[v][t][r];
        if (gridDim.y > 1) own[i] = sum;
        else if (first_row + r < rows)
        {
            long at = (long)(first_token + t) * y_stride + first_row + r;
            y[at] = accumulate ? y[at] + sum : sum;
        }
    }
    if (gridDim.y == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last_block = atomicAdd(&counters[tile], 1) == (int)gridDim.y - 1;
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    const float* all = partials + (long)tile * gridDim.y * (QMMA_TOKENS * QMMA_ROWS);
    for (int i = threadIdx.x; i < tile_tokens * QMMA_ROWS; i += blockDim.x)
    {
        int t = i / QMMA_ROWS, r = i % QMMA_ROWS;
        if (first_row + r >= rows) continue;
        float sum = 0.0f;
        for (int s = 0; s < (int)gridDim.y; s++) sum += __ldcg(&all[(long)s * (QMMA_TOKENS * QMMA_ROWS) + i]);
        long at = (long)(first_token + t) * y_stride + first_row + r;
        y[at] = accumulate ? y[at] + sum : sum;
    }
    if (threadIdx.x == 0) counters[tile] = 0;
}
#define QUANTISED_GEMM(NAME, F) \
extern "C" __global__ void __launch_bounds__(256) gemm_##NAME(const byte_t* w, const operand_t* x, float* y, int groups, int cols, int tokens, \
    int accumulate, int y_stride, int subs_per_split, float* partials, int* counters) \
{ quantised_mma<F>(w, x, y, groups, cols, tokens, accumulate, y_stride, subs_per_split, partials, counters); }
#else
#define QUANTISED_GEMM(NAME, F)
#endif

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
{ quantised_embed<F>(table, cols, ids, soft, x); } \
QUANTISED_GEMM(NAME, F)

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
