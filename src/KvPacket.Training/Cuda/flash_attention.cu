// FlashAttention-2-style attention for training, bf16 operands on tensor cores (mma.sync m16n8k16, f32 accumulation):
// the forward pass keeps only each row's log-sum-exp, and the backward pass recomputes the probabilities tile by tile,
// so no [n, n] matrix ever reaches memory. Masks are the trainer's: row i sees keys [first_visible[i], i].
// Layouts: q, k, v, dO head-major [B, H, n, HD] bf16 (k and v already repeated per query head); outputs f32 head-major.
// The backward pass is two kernels — dK/dV by key tiles, dQ by query tiles — so nothing is accumulated with atomics and
// every result has a fixed summation order.
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4): A regs (g, 2t..), (g+8, 2t..), (g, 2t+8..),
// (g+8, 2t+8..); B regs (k 2t.., n g), (k 2t+8.., n g); C (g, 2t..), (g+8, 2t..). Shared rows are padded by 8 elements
// so the 32-bit fragment loads of a warp hit 32 different banks.

#define FA_TILE 64
#define FA_THREADS 128

__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned ld32(const __nv_bfloat16* p) { return *(const unsigned*)p; }

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(unsigned*)&v;
}

__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}

__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffff, v, 1);
    return v + __shfl_xor_sync(0xffffffff, v, 2);
}

// A fragments of 16 rows × HD (rows r0 = base + g and r0 + 8 of a row-major [n, HD] matrix), zero past n.
template <int HD>
__device__ __forceinline__ void load_rows_a(const __nv_bfloat16* m, int r0, int n, int t, unsigned (*a)[4])
{
    for (int kc = 0; kc < HD / 16; kc++)
    {
        int c = kc * 16 + 2 * t;
        a[kc][0] = r0 < n ? ld32(m + (long)r0 * HD + c) : 0u;
        a[kc][1] = r0 + 8 < n ? ld32(m + (long)(r0 + 8) * HD + c) : 0u;
        a[kc][2] = r0 < n ? ld32(m + (long)r0 * HD + c + 8) : 0u;
        a[kc][3] = r0 + 8 < n ? ld32(m + (long)(r0 + 8) * HD + c + 8) : 0u;
    }
}

// Rows [row0, row0 + 64) of a row-major [n, HD] matrix into shared memory (stride HD + 8), zero past n; 16-byte copies.
template <int HD>
__device__ __forceinline__ void load_tile(const __nv_bfloat16* m, int row0, int n, __nv_bfloat16* rows)
{
    for (int idx = threadIdx.x; idx < FA_TILE * HD / 8; idx += FA_THREADS)
    {
        int r = idx / (HD / 8), chunk = idx % (HD / 8), row = row0 + r;
        uint4 v = row < n ? *(const uint4*)(m + (long)row * HD + chunk * 8) : make_uint4(0, 0, 0, 0);
        *(uint4*)(rows + r * (HD + 8) + chunk * 8) = v;
    }
}

// S (16 rows × 64 columns) = A (16 × HD, fragments) · Bᵀ, B's 64 rows row-major in shared memory (stride HD + 8).
template <int HD>
__device__ __forceinline__ void product_abt(const unsigned (*a)[4], const __nv_bfloat16* b, int g, int t, float (*s)[4])
{
    for (int j = 0; j < 8; j++)
    {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
        const __nv_bfloat16* row = b + (j * 8 + g) * (HD + 8) + 2 * t;
        for (int kc = 0; kc < HD / 16; kc++) mma_bf16(s[j], a[kc], ld32(row + kc * 16), ld32(row + kc * 16 + 8));
    }
}

// acc (16 × HD) += P (16 × 64, C fragments, rounded to bf16) · M (64 × HD), M's 64 rows row-major in shared memory
// (stride HD + 8). M's B fragments (k = row, n = column) are read transposed by ldmatrix: lanes 0-15 address rows
// 16kk + 0..15 at column 16c, lanes 16-31 the same rows at column 16c + 8, giving the fragments of two 8-column tiles.
template <int HD>
__device__ __forceinline__ void product_pm(const float (*p)[4], const __nv_bfloat16* m, int lane, float (*acc)[4])
{
    for (int kk = 0; kk < 4; kk++)
    {
        unsigned a[4] = { pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                          pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]) };
        const __nv_bfloat16* row = m + (kk * 16 + (lane & 15)) * (HD + 8) + (lane >> 4) * 8;
        for (int c = 0; c < HD / 16; c++)
        {
            unsigned b0, b1, b2, b3, address = (unsigned)__cvta_generic_to_shared(row + c * 16);
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                         : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3) : "r"(address));
            mma_bf16(acc[2 * c], a, b0, b1);
            mma_bf16(acc[2 * c + 1], a, b2, b3);
        }
    }
}

// The first key any of a tile's rows sees (the tile's first key tile), from first_visible.
__device__ __forceinline__ int tile_first_key(const int* first_visible, int row0, int n)
{
    __shared__ int first;
    if (threadIdx.x == 0) first = n;
    __syncthreads();
    if (threadIdx.x < FA_TILE && row0 + threadIdx.x < n) atomicMin(&first, first_visible[row0 + threadIdx.x]);
    __syncthreads();
    return first / FA_TILE * FA_TILE;
}

// Forward: o = softmax(scale·q·kᵀ, masked) · v, written token-major [tokens, H·HD] in bf16 (the output product's
// operand), and lse = log2 Σ exp2 of the scaled scores per row. Grid (tiles of 64 rows, B·H); each warp 16 rows.
template <int HD>
__device__ void flash_forward(const __nv_bfloat16* qh, const __nv_bfloat16* kh, const __nv_bfloat16* vh, const int* first_visible,
                              __nv_bfloat16* out, float* lse, int n, int heads, float scale_log2)
{
    __shared__ __align__(16) __nv_bfloat16 ks[FA_TILE * (HD + 8)];
    __shared__ __align__(16) __nv_bfloat16 vs[FA_TILE * (HD + 8)];
    int bh = blockIdx.y, b = bh / heads, row0 = blockIdx.x * FA_TILE;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    long base = (long)bh * n * HD;
    const int* first = first_visible + (long)b * n;
    int r0 = row0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[HD / 16][4];
    load_rows_a<HD>(qh + base, r0, n, t, qa);
    int f0 = r0 < n ? first[r0] : n, f1 = r1 < n ? first[r1] : n;
    int key_begin = tile_first_key(first, row0, n), key_end = min(n, row0 + FA_TILE);
    float o[HD / 8][4] = {};
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    for (int key0 = key_begin; key0 < key_end; key0 += FA_TILE)
    {
        __syncthreads();
        load_tile<HD>(kh + base, key0, n, ks);
        load_tile<HD>(vh + base, key0, n, vs);
        __syncthreads();
        float s[8][4];
        product_abt<HD>(qa, ks, g, t, s);
        float x0 = NEG_INF, x1 = NEG_INF;
        for (int j = 0; j < 8; j++)
            for (int e = 0; e < 4; e++)
            {
                int key = key0 + j * 8 + 2 * t + (e & 1), row = e < 2 ? r0 : r1, f = e < 2 ? f0 : f1;
                s[j][e] = key <= row && key >= f ? s[j][e] * scale_log2 : NEG_INF;
                if (e < 2) x0 = fmaxf(x0, s[j][e]); else x1 = fmaxf(x1, s[j][e]);
            }
        float n0 = fmaxf(m0, quad_max(x0)), n1 = fmaxf(m1, quad_max(x1));
        float b0 = n0 == NEG_INF ? 0.f : n0, b1 = n1 == NEG_INF ? 0.f : n1;
        float c0 = exp2f(m0 - b0), c1 = exp2f(m1 - b1), sum0 = 0.f, sum1 = 0.f;
        for (int j = 0; j < 8; j++)
        {
            s[j][0] = exp2f(s[j][0] - b0); s[j][1] = exp2f(s[j][1] - b0);
            s[j][2] = exp2f(s[j][2] - b1); s[j][3] = exp2f(s[j][3] - b1);
            sum0 += s[j][0] + s[j][1];
            sum1 += s[j][2] + s[j][3];
        }
        l0 = l0 * c0 + quad_sum(sum0);
        l1 = l1 * c1 + quad_sum(sum1);
        m0 = n0;
        m1 = n1;
        for (int dt = 0; dt < HD / 8; dt++) { o[dt][0] *= c0; o[dt][1] *= c0; o[dt][2] *= c1; o[dt][3] *= c1; }
        product_pm<HD>(s, vs, lane, o);
    }
    float i0 = l0 > 0.f ? 1.f / l0 : 0.f, i1 = l1 > 0.f ? 1.f / l1 : 0.f;
    int h = bh % heads;
    __nv_bfloat16* o0 = out + ((long)b * n + r0) * heads * HD + h * HD;
    __nv_bfloat16* o1 = out + ((long)b * n + r1) * heads * HD + h * HD;
    for (int dt = 0; dt < HD / 8; dt++)
    {
        int c = dt * 8 + 2 * t;
        if (r0 < n) *(__nv_bfloat162*)(o0 + c) = __floats2bfloat162_rn(o[dt][0] * i0, o[dt][1] * i0);
        if (r1 < n) *(__nv_bfloat162*)(o1 + c) = __floats2bfloat162_rn(o[dt][2] * i1, o[dt][3] * i1);
    }
    if (t == 0)
    {
        if (r0 < n) lse[(long)bh * n + r0] = m0 + log2f(l0);
        if (r1 < n) lse[(long)bh * n + r1] = m1 + log2f(l1);
    }
}

// Before the backward kernels, per token (one warp per head): dO (f32, token-major [tokens, H·HD]) into head-major bf16
// for the products, and delta[bh, r] = Σ_d dO[r, d]·O[r, d] with the forward's output O (bf16, token-major).
__device__ void flash_prepare(const float* d_out, const __nv_bfloat16* out, __nv_bfloat16* doh, float* delta, int n, int heads, int head_dim)
{
    int token = blockIdx.x, b = token / n, r = token % n, lane = threadIdx.x & 31;
    for (int h = threadIdx.x >> 5; h < heads; h += blockDim.x >> 5)
    {
        long at = (long)token * heads * head_dim + (long)h * head_dim;
        __nv_bfloat16* target = doh + (((long)b * heads + h) * n + r) * head_dim;
        float s = 0.f;
        for (int d = lane; d < head_dim; d += 32)
        {
            float g = d_out[at + d];
            target[d] = __float2bfloat16(g);
            s += g * __bfloat162float(out[at + d]);
        }
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0) delta[((long)b * heads + h) * n + r] = s;
    }
}

// dK and dV for a tile of 64 keys (each warp 16 keys), over every query tile that can see them:
// Pᵀ = exp2(scale·K·Qᵀ − lse), dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ⊙(dPᵀ − delta), dK += scale·dSᵀ·Q.
template <int HD>
__device__ void flash_backward_kv(const __nv_bfloat16* qh, const __nv_bfloat16* kh, const __nv_bfloat16* vh, const __nv_bfloat16* doh,
                                  const float* lse, const float* delta, const int* first_visible, float* dkh, float* dvh,
                                  int n, int heads, float scale, float scale_log2)
{
    __shared__ __align__(16) __nv_bfloat16 qs[FA_TILE * (HD + 8)];
    __shared__ __align__(16) __nv_bfloat16 dos[FA_TILE * (HD + 8)];
    __shared__ float lse_s[FA_TILE], delta_s[FA_TILE];
    __shared__ int first_s[FA_TILE];
    int bh = blockIdx.y, b = bh / heads, key0 = blockIdx.x * FA_TILE;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    long base = (long)bh * n * HD;
    const int* first = first_visible + (long)b * n;
    int k0 = key0 + warp * 16 + g, k1 = k0 + 8;
    unsigned ka[HD / 16][4], va[HD / 16][4];
    load_rows_a<HD>(kh + base, k0, n, t, ka);
    load_rows_a<HD>(vh + base, k0, n, t, va);
    float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
    for (int q0 = key0; q0 < n; q0 += FA_TILE)
    {
        __syncthreads();
        load_tile<HD>(qh + base, q0, n, qs);
        load_tile<HD>(doh + base, q0, n, dos);
        if (threadIdx.x < FA_TILE)
        {
            int q = q0 + threadIdx.x;
            lse_s[threadIdx.x] = q < n ? lse[(long)bh * n + q] : 0.f;
            delta_s[threadIdx.x] = q < n ? delta[(long)bh * n + q] : 0.f;
            first_s[threadIdx.x] = q < n ? first[q] : n;   // past n: sees nothing
        }
        __syncthreads();
        float p[8][4], dp[8][4];
        product_abt<HD>(ka, qs, g, t, p);     // scores Sᵀ: rows are keys, columns queries
        product_abt<HD>(va, dos, g, t, dp);   // dPᵀ
        for (int j = 0; j < 8; j++)
            for (int e = 0; e < 4; e++)
            {
                int column = j * 8 + 2 * t + (e & 1), q = q0 + column, key = e < 2 ? k0 : k1;
                bool seen = q >= key && key >= first_s[column] && q < n && key < n;
                float pe = seen ? exp2f(p[j][e] * scale_log2 - lse_s[column]) : 0.f;
                p[j][e] = pe;
                dp[j][e] = pe * (dp[j][e] - delta_s[column]);   // dSᵀ
            }
        product_pm<HD>(p, dos, lane, dv);
        product_pm<HD>(dp, qs, lane, dk);
    }
    for (int dt = 0; dt < HD / 8; dt++)
    {
        int c = dt * 8 + 2 * t;
        if (k0 < n)
        {
            dkh[base + (long)k0 * HD + c] = dk[dt][0] * scale; dkh[base + (long)k0 * HD + c + 1] = dk[dt][1] * scale;
            dvh[base + (long)k0 * HD + c] = dv[dt][0]; dvh[base + (long)k0 * HD + c + 1] = dv[dt][1];
        }
        if (k1 < n)
        {
            dkh[base + (long)k1 * HD + c] = dk[dt][2] * scale; dkh[base + (long)k1 * HD + c + 1] = dk[dt][3] * scale;
            dvh[base + (long)k1 * HD + c] = dv[dt][2]; dvh[base + (long)k1 * HD + c + 1] = dv[dt][3];
        }
    }
}

// dQ for a tile of 64 query rows (each warp 16), over the key tiles they see:
// P = exp2(scale·Q·Kᵀ − lse), dP = dO·Vᵀ, dS = P⊙(dP − delta), dQ += scale·dS·K.
template <int HD>
__device__ void flash_backward_q(const __nv_bfloat16* qh, const __nv_bfloat16* kh, const __nv_bfloat16* vh, const __nv_bfloat16* doh,
                                 const float* lse, const float* delta, const int* first_visible, float* dqh,
                                 int n, int heads, float scale, float scale_log2)
{
    __shared__ __align__(16) __nv_bfloat16 ks[FA_TILE * (HD + 8)];
    __shared__ __align__(16) __nv_bfloat16 vs[FA_TILE * (HD + 8)];
    int bh = blockIdx.y, b = bh / heads, row0 = blockIdx.x * FA_TILE;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    long base = (long)bh * n * HD;
    const int* first = first_visible + (long)b * n;
    int r0 = row0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[HD / 16][4], da[HD / 16][4];
    load_rows_a<HD>(qh + base, r0, n, t, qa);
    load_rows_a<HD>(doh + base, r0, n, t, da);
    int f0 = r0 < n ? first[r0] : n, f1 = r1 < n ? first[r1] : n;
    float lse0 = r0 < n ? lse[(long)bh * n + r0] : 0.f, lse1 = r1 < n ? lse[(long)bh * n + r1] : 0.f;
    float d0 = r0 < n ? delta[(long)bh * n + r0] : 0.f, d1 = r1 < n ? delta[(long)bh * n + r1] : 0.f;
    int key_begin = tile_first_key(first, row0, n), key_end = min(n, row0 + FA_TILE);
    float dq[HD / 8][4] = {};
    for (int key0 = key_begin; key0 < key_end; key0 += FA_TILE)
    {
        __syncthreads();
        load_tile<HD>(kh + base, key0, n, ks);
        load_tile<HD>(vh + base, key0, n, vs);
        __syncthreads();
        float p[8][4], dp[8][4];
        product_abt<HD>(qa, ks, g, t, p);
        product_abt<HD>(da, vs, g, t, dp);
        for (int j = 0; j < 8; j++)
            for (int e = 0; e < 4; e++)
            {
                int key = key0 + j * 8 + 2 * t + (e & 1), row = e < 2 ? r0 : r1, f = e < 2 ? f0 : f1;
                bool seen = key <= row && key >= f && row < n;
                float pe = seen ? exp2f(p[j][e] * scale_log2 - (e < 2 ? lse0 : lse1)) : 0.f;
                dp[j][e] = pe * (dp[j][e] - (e < 2 ? d0 : d1));   // dS
            }
        product_pm<HD>(dp, ks, lane, dq);
    }
    for (int dt = 0; dt < HD / 8; dt++)
    {
        int c = dt * 8 + 2 * t;
        if (r0 < n) { dqh[base + (long)r0 * HD + c] = dq[dt][0] * scale; dqh[base + (long)r0 * HD + c + 1] = dq[dt][1] * scale; }
        if (r1 < n) { dqh[base + (long)r1 * HD + c] = dq[dt][2] * scale; dqh[base + (long)r1 * HD + c + 1] = dq[dt][3] * scale; }
    }
}

#define FLASH_FOR_HEAD_DIM(HD)                                                                                                 \
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_forward_##HD(const __nv_bfloat16* qh, const __nv_bfloat16* kh,  \
    const __nv_bfloat16* vh, const int* first_visible, __nv_bfloat16* out, float* lse, int n, int heads, float scale_log2)    \
    { flash_forward<HD>(qh, kh, vh, first_visible, out, lse, n, heads, scale_log2); }                                         \
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_backward_kv_##HD(const __nv_bfloat16* qh, const __nv_bfloat16* kh, \
    const __nv_bfloat16* vh, const __nv_bfloat16* doh, const float* lse, const float* delta, const int* first_visible,        \
    float* dkh, float* dvh, int n, int heads, float scale, float scale_log2)                                                 \
    { flash_backward_kv<HD>(qh, kh, vh, doh, lse, delta, first_visible, dkh, dvh, n, heads, scale, scale_log2); }             \
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_backward_q_##HD(const __nv_bfloat16* qh, const __nv_bfloat16* kh,  \
    const __nv_bfloat16* vh, const __nv_bfloat16* doh, const float* lse, const float* delta, const int* first_visible,        \
    float* dqh, int n, int heads, float scale, float scale_log2)                                                             \
    { flash_backward_q<HD>(qh, kh, vh, doh, lse, delta, first_visible, dqh, n, heads, scale, scale_log2); }

FLASH_FOR_HEAD_DIM(64)

extern "C" __global__ void flash_prepare_bf16(const float* d_out, const __nv_bfloat16* out, __nv_bfloat16* doh, float* delta, int n, int heads, int head_dim)
    { flash_prepare(d_out, out, doh, delta, n, heads, head_dim); }
