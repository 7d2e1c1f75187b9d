// Kernels shared by every model: the generator (or, for a shape without a card, the runtime) puts the shape's
// constants in front as #defines: HIDDEN_SIZE INTERMEDIATE_SIZE HEADS KV_HEADS HEAD_DIM GROUP_SIZE ROPE_PAIRS LAYERS
// BLOCK_TOKENS, and ROPE_INV_FREQ[ROPE_PAIRS] (float64 inverse frequencies, scaling applied).
// KV pool layout, as on the CPU: a block is, per layer, K then V planes of [KV_HEADS][BLOCK_TOKENS][HEAD_DIM] halves.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// KV elements: f16 unless KV_F32 is defined (the runtime adds it for an f32 cache).
#ifdef KV_F32
typedef float kv_t;
__device__ __forceinline__ float kv_load(kv_t x) { return x; }
__device__ __forceinline__ float2 kv_load_pair(const kv_t* at) { return *(const float2*)at; }
__device__ __forceinline__ kv_t kv_store(float x) { return x; }
#else
typedef __half kv_t;
__device__ __forceinline__ float kv_load(kv_t x) { return __half2float(x); }
__device__ __forceinline__ float2 kv_load_pair(const kv_t* at) { return __half22float2(*(const __half2*)at); }
__device__ __forceinline__ kv_t kv_store(float x) { return __float2half_rn(x); }
#endif

// Operands of the matrix products (what RMSNorm, SwiGLU and attention write for them): bf16 when the runtime defines
// OPERAND_BF16 (bf16 weights), f32 otherwise. The products accumulate in f32 into f32 outputs.
#ifdef OPERAND_BF16
typedef __nv_bfloat16 operand_t;
__device__ __forceinline__ operand_t operand_store(float x) { return __float2bfloat16(x); }
#else
typedef float operand_t;
__device__ __forceinline__ operand_t operand_store(float x) { return x; }
#endif

#if !defined(HEAD_DIM) || !defined(GROUP_SIZE) || !defined(LAYERS) || !defined(BLOCK_TOKENS)
#error "kernels.cu needs the model's constants defined first"
#endif

// NVRTC has no <math.h>: negative infinity by its bits.
#define NEG_INF __int_as_float(0xff800000)
#define PLANE_ELEMENTS (KV_HEADS * BLOCK_TOKENS * HEAD_DIM)
#define BLOCK_ELEMENTS (2L * LAYERS * PLANE_ELEMENTS)
// q, k and v come from one fused projection: each token's row is [q (HEADS·d) | k (KV_HEADS·d) | v (KV_HEADS·d)].
#define QKV_WIDTH ((HEADS + 2 * KV_HEADS) * HEAD_DIM)

// Programmatic dependent launch (sm_90+; no-ops when a kernel is launched without it): every kernel lets the next one
// launch at once (it can only start once all of this kernel's blocks have started, so nothing starves), and waits for
// the previous kernel's results before reading or writing anything it shares with it. What a kernel does before the
// wait (reading weights, or KV rows of earlier steps) overlaps the previous kernel.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LAUNCH_DEPENDENTS() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define WAIT_FOR_PREVIOUS() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define LAUNCH_DEPENDENTS()
#define WAIT_FOR_PREVIOUS()
#endif

// cos/sin of position * inv_freq[i]: the angle taken and reduced to [−π, π] in float64 (as exact as the CPU's float64
// angle), then sincosf — float64 sin/cos cost more than the rest of a decode attention kernel.
__device__ __forceinline__ void rope_angle(int position, int i, float* c, float* s)
{
    double angle = (double)position * ROPE_INV_FREQ[i];
    angle -= 6.283185307179586 * rint(angle * 0.15915494309189535);
    sincosf((float)angle, s, c);
}

// RoPE pair i of a row: its two columns (2i, 2i + 1 when interleaved, else i, i + ROPE_PAIRS) and their values rotated
// by `position`.
struct RotatedPair { int a, b; float va, vb; };
__device__ __forceinline__ RotatedPair rotate_pair(const float* row, int i, int position, int interleaved)
{
    RotatedPair p;
    p.a = interleaved ? 2 * i : i;
    p.b = interleaved ? 2 * i + 1 : i + ROPE_PAIRS;
    float c, s;
    rope_angle(position, i, &c, &s);
    p.va = row[p.a] * c - row[p.b] * s;
    p.vb = row[p.a] * s + row[p.b] * c;
    return p;
}

// One block table entry: block id, first position it holds, token count, rotation offset, first slot.
struct KvEntry { int block; int first_position; int count; int rotation; int first_slot; };

// Causal GQA attention for decode and mixed steps, flash-decoding style: each token's block table is cut into splits
// of `per_split` entries; a block takes one (token, KV head, split), one warp per query head of the group, and keeps
// an online softmax over the split's keys in registers (16 keys at a time: lane = key, the two half-warps take half
// the dimensions each); each entry's K and V rows pass through registers into shared memory, the next entry's loads
// in flight while this one computes. With several splits each block writes its (max, sum, output) and the last block
// to finish for a (token, KV head) merges them — no second launch, no score rows in global memory. Queries are rotated
// here by (position − the entry's rotation offset), so packet blocks need no key rewrite; positions no entry holds
// (pruned packets) get no attention.
// With `append` (a pure decode step: one token per sequence) the kernel also does kv_append's work for its token:
// the block whose entry holds the token's position rotates the token's K, stores K and V in the pool, and uses them.
// grid (tokens, KV_HEADS, splits), block GROUP_SIZE · 32 threads; partial_ml: [tokens][HEADS][splits] (m, l);
// partial_acc: [tokens][HEADS][splits][HEAD_DIM]; counters: [tokens][KV_HEADS] zeros (left zero again).
#define KV_WORDS (HEAD_DIM * (int)sizeof(kv_t) / 4)   // 4-byte words in one K or V row
// Shared rows a word longer (f16; two for f32, to keep pairs 8-byte aligned): lanes reading one column across keys hit
// distinct banks.
#define KV_ROW_WORDS (KV_WORDS + (sizeof(kv_t) == 2 ? 1 : 2))
#define KV_ROW (KV_ROW_WORDS * 4 / (int)sizeof(kv_t))
#define DECODE_THREADS (GROUP_SIZE * 32)
#define DECODE_LOADS ((BLOCK_TOKENS * KV_WORDS + DECODE_THREADS - 1) / DECODE_THREADS)
#define PAIRS_PER_LANE ((HEAD_DIM / 2 + 31) / 32)
#if HEAD_DIM % 4 != 0
#error "attention_decode reads dimensions in pairs, half a head per half-warp: the head dimension must be a multiple of 4"
#endif
// Entry `source`'s K and V rows of KV head g into registers, every load issued at once; under append the token's own
// row is left out (attention_decode computes it). Also returns the entry's visible keys, that row (or −1) and the
// entry's K plane.
__device__ __forceinline__ void decode_entry_rows(kv_t* pool, int layer, int g, KvEntry entry, int position, int append,
    unsigned* k_loaded, unsigned* v_loaded, int* visible, int* own_row, kv_t** kplane)
{
    *visible = min(entry.count, position + 1 - entry.first_position);
    *own_row = append && entry.first_position + *visible - 1 == position ? *visible - 1 : -1;
    *kplane = pool + entry.block * BLOCK_ELEMENTS + (2L * layer) * PLANE_ELEMENTS + ((long)g * BLOCK_TOKENS + entry.first_slot) * HEAD_DIM;
    const unsigned* k_words = (const unsigned*)*kplane;
    const unsigned* v_words = (const unsigned*)(*kplane + PLANE_ELEMENTS);
    #pragma unroll
    for (int r = 0; r < DECODE_LOADS; r++)
    {
        int i = threadIdx.x + r * DECODE_THREADS;
        if (i < *visible * KV_WORDS && i / KV_WORDS != *own_row) { k_loaded[r] = k_words[i]; v_loaded[r] = v_words[i]; }
    }
}

extern "C" __global__ void attention_decode(const float* q, kv_t* pool, int layer, const KvEntry* entries,
    const int* table_start, const int* table_length, const int* token_sequence, const int* token_position,
    float scale, int interleaved, int per_split, int splits, int append, float2* partial_ml, float* partial_acc, int* counters, operand_t* out)
{
    __shared__ __align__(16) unsigned key_words[BLOCK_TOKENS * KV_ROW_WORDS], value_words[BLOCK_TOKENS * KV_ROW_WORDS];
    kv_t* keys = (kv_t*)key_words;
    kv_t* values = (kv_t*)value_words;
    __shared__ __align__(16) float rotated[GROUP_SIZE][HEAD_DIM];
    __shared__ bool last_block;
    // The step's metadata was uploaded before the step's first kernel, and the pool rows of earlier tokens were written
    // by earlier steps: with append (nothing of this step in the pool yet) the first entry's rows are read before
    // waiting for the q/k/v product; without, kv_append (the previous kernel) has written this step's rows: wait first.
    LAUNCH_DEPENDENTS();
    if (!append) WAIT_FOR_PREVIOUS();
    int token = blockIdx.x, g = blockIdx.y, split = blockIdx.z, h = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int key = lane & 15, part = lane >> 4;
    int sequence = token_sequence[token], position = token_position[token];
    const KvEntry* table = entries + table_start[sequence];
    int first_entry = split * per_split, last_entry = min(first_entry + per_split, table_length[sequence]);
    const float* query = q + (long)token * QKV_WIDTH + (g * GROUP_SIZE + h) * HEAD_DIM;

    float m = NEG_INF, l = 0;
    float2 acc[PAIRS_PER_LANE];   // dimensions 2·(lane + 32·i) and the next
    for (int i = 0; i < PAIRS_PER_LANE; i++) acc[i] = make_float2(0, 0);
    int rotation = -2147483647;
    // Entry e's rows go through registers: the next entry's loads are in flight while this one computes.
    unsigned k_loaded[DECODE_LOADS], v_loaded[DECODE_LOADS];
    int e = first_entry;
    bool have = e < last_entry && table[e].first_position <= position;
    KvEntry entry;
    int visible = 0, own_row = -1;
    kv_t* kplane = pool;
    if (have) decode_entry_rows(pool, layer, g, entry = table[e], position, append, k_loaded, v_loaded, &visible, &own_row, &kplane);
    while (have)
    {
        __syncthreads();   // the previous entry is done with shared memory
        #pragma unroll
        for (int r = 0; r < DECODE_LOADS; r++)
        {
            int i = threadIdx.x + r * DECODE_THREADS;
            if (i < visible * KV_WORDS && i / KV_WORDS != own_row)
            {
                key_words[(i / KV_WORDS) * KV_ROW_WORDS + i % KV_WORDS] = k_loaded[r];
                value_words[(i / KV_WORDS) * KV_ROW_WORDS + i % KV_WORDS] = v_loaded[r];
            }
        }
        WAIT_FOR_PREVIOUS();   // q, k and v of this step from here on (a no-op once waited)
        if (own_row >= 0)
        {
            // Under append, the token's own row: rotated K and V from the q/k/v product, into the pool and shared memory.
            const float* k_row = q + (long)token * QKV_WIDTH + (HEADS + g) * HEAD_DIM;
            const float* v_row = k_row + KV_HEADS * HEAD_DIM;
            for (int i = threadIdx.x; i < ROPE_PAIRS; i += blockDim.x)
            {
                RotatedPair r = rotate_pair(k_row, i, position, interleaved);
                int a = r.a, b = r.b;
                kv_t ka = kv_store(r.va), kb = kv_store(r.vb), va = kv_store(v_row[a]), vb = kv_store(v_row[b]);
                keys[own_row * KV_ROW + a] = ka;
                keys[own_row * KV_ROW + b] = kb;
                values[own_row * KV_ROW + a] = va;
                values[own_row * KV_ROW + b] = vb;
                kplane[own_row * HEAD_DIM + a] = ka;
                kplane[own_row * HEAD_DIM + b] = kb;
                kplane[PLANE_ELEMENTS + own_row * HEAD_DIM + a] = va;
                kplane[PLANE_ELEMENTS + own_row * HEAD_DIM + b] = vb;
            }
        }
        if (entry.rotation != rotation)
        {
            // The warp's query rotated by (position − the entry's rotation offset): once per run of entries sharing one.
            rotation = entry.rotation;
            for (int i = lane; i < ROPE_PAIRS; i += 32)
            {
                RotatedPair r = rotate_pair(query, i, position - rotation, interleaved);
                rotated[h][r.a] = r.va;
                rotated[h][r.b] = r.vb;
            }
        }
        __syncthreads();
        int count = visible;   // this entry's keys; the registers now take the next entry's rows
        have = ++e < last_entry && table[e].first_position <= position;
        if (have) decode_entry_rows(pool, layer, g, entry = table[e], position, append, k_loaded, v_loaded, &visible, &own_row, &kplane);

        float score = NEG_INF;
        {
            // Two dimensions per step: the rotated query as float2, the keys as pairs.
            float dot = 0;
            const float2* r = (const float2*)(rotated[h] + part * (HEAD_DIM / 2));
            const kv_t* k = keys + key * KV_ROW + part * (HEAD_DIM / 2);
            #pragma unroll
            for (int d = 0; d < HEAD_DIM / 4; d++)
            {
                float2 kf = kv_load_pair(k + 2 * d), rf = r[d];
                dot += rf.x * kf.x + rf.y * kf.y;
            }
            dot += __shfl_xor_sync(0xffffffff, dot, 16);
            if (key < count) score = dot * scale;
        }
        float block_max = score;
        for (int offset = 8; offset > 0; offset /= 2) block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffff, block_max, offset));
        float m_new = fmaxf(m, block_max);   // finite: the entry has at least one visible key
        float alpha = __expf(m - m_new), p = key < count ? __expf(score - m_new) : 0.0f, p_sum = p;
        for (int offset = 8; offset > 0; offset /= 2) p_sum += __shfl_xor_sync(0xffffffff, p_sum, offset);
        m = m_new;
        l = l * alpha + p_sum;
        for (int i = 0; i < PAIRS_PER_LANE; i++) { acc[i].x *= alpha; acc[i].y *= alpha; }
        for (int j = 0; j < count; j++)
        {
            float pj = __shfl_sync(0xffffffff, p, j);
            for (int i = 0; i < PAIRS_PER_LANE; i++)
                if (lane + 32 * i < HEAD_DIM / 2)
                {
                    float2 vf = kv_load_pair(values + j * KV_ROW + 2 * (lane + 32 * i));
                    acc[i].x += pj * vf.x;
                    acc[i].y += pj * vf.y;
                }
        }
    }

    WAIT_FOR_PREVIOUS();   // a block with no entry still writes: the previous kernel reads the operand buffer
    long head = (long)token * HEADS + g * GROUP_SIZE + h;
    if (splits == 1)
    {
        for (int i = 0; i < PAIRS_PER_LANE; i++)
            if (lane + 32 * i < HEAD_DIM / 2)
            {
                int d = 2 * (lane + 32 * i);
                out[head * HEAD_DIM + d] = operand_store(l > 0 ? acc[i].x / l : 0.0f);
                out[head * HEAD_DIM + d + 1] = operand_store(l > 0 ? acc[i].y / l : 0.0f);
            }
        return;
    }
    if (lane == 0) partial_ml[head * splits + split] = make_float2(m, l);
    float2* own_partial = (float2*)(partial_acc + (head * splits + split) * HEAD_DIM);
    for (int i = 0; i < PAIRS_PER_LANE; i++)
        if (lane + 32 * i < HEAD_DIM / 2) own_partial[lane + 32 * i] = acc[i];
    // The last of the splits to finish merges them: out = Σ_s exp(m_s − M)·acc_s / Σ_s exp(m_s − M)·l_s.
    __threadfence();
    __syncthreads();
    int* counter = counters + (long)token * KV_HEADS + g;
    if (threadIdx.x == 0) last_block = atomicAdd(counter, 1) == splits - 1;
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    // 32 splits per round: lane s takes split s's weight, then every lane reads all 32 splits' outputs for its
    // dimensions at once (a serial walk over the splits would wait one L2 round trip per split).
    const float2* ml = partial_ml + head * splits;
    const float2* partial = (const float2*)(partial_acc + head * splits * HEAD_DIM);
    float max = NEG_INF;
    for (int s = lane; s < splits; s += 32) max = fmaxf(max, __ldcg(&ml[s]).x);
    for (int offset = 16; offset > 0; offset /= 2) max = fmaxf(max, __shfl_xor_sync(0xffffffff, max, offset));
    float total = 0;
    for (int i = 0; i < PAIRS_PER_LANE; i++) acc[i] = make_float2(0, 0);
    for (int first = 0; first < splits; first += 32)
    {
        float weight = 0;
        if (first + lane < splits)
        {
            float2 v = __ldcg(&ml[first + lane]);
            weight = v.y > 0 ? __expf(v.x - max) : 0.0f;
            total += weight * v.y;
        }
        #pragma unroll
        for (int j = 0; j < 32; j++)
        {
            float wj = __shfl_sync(0xffffffff, weight, j);
            if (first + j < splits)
                for (int i = 0; i < PAIRS_PER_LANE; i++)
                    if (lane + 32 * i < HEAD_DIM / 2)
                    {
                        float2 v = __ldcg(&partial[(long)(first + j) * (HEAD_DIM / 2) + lane + 32 * i]);
                        acc[i].x += wj * v.x;
                        acc[i].y += wj * v.y;
                    }
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffff, total, offset);
    for (int i = 0; i < PAIRS_PER_LANE; i++)
        if (lane + 32 * i < HEAD_DIM / 2)
        {
            int d = 2 * (lane + 32 * i);
            out[head * HEAD_DIM + d] = operand_store(total > 0 ? acc[i].x / total : 0.0f);
            out[head * HEAD_DIM + d + 1] = operand_store(total > 0 ? acc[i].y / total : 0.0f);
        }
    if (threadIdx.x == 0) *counter = 0;
}

// x[token] = table[ids[token]] for f32 tables [vocab][HIDDEN_SIZE]; a negative id −1 − r is a soft token (KV Packet's
// header and trailer, KVLink's links): row r of `soft` [rows][HIDDEN_SIZE].
extern "C" __global__ void embed(const float* table, const int* ids, const float* soft, float* x)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    int id = ids[blockIdx.x];
    const float* row = id >= 0 ? table + (long)id * HIDDEN_SIZE : soft + (long)(-1 - id) * HIDDEN_SIZE;
    for (int i = threadIdx.x; i < HIDDEN_SIZE; i += blockDim.x) x[(long)blockIdx.x * HIDDEN_SIZE + i] = row[i];
}

// out[token] = x[token] / rms(x[token]) * weight, rows of HIDDEN_SIZE floats; one block of NORM_THREADS per token.
// Each thread keeps its elements in registers; the weights are read before waiting for the previous kernel.
#define NORM_THREADS 1024
#define NORM_PER_THREAD ((HIDDEN_SIZE + NORM_THREADS - 1) / NORM_THREADS)
extern "C" __global__ void __launch_bounds__(NORM_THREADS) rms_norm(const float* x, const float* weight, operand_t* out, float epsilon)
{
    __shared__ float partial[NORM_THREADS / 32];
    LAUNCH_DEPENDENTS();
    float w[NORM_PER_THREAD], v[NORM_PER_THREAD];
    #pragma unroll
    for (int r = 0; r < NORM_PER_THREAD; r++)
    {
        int i = threadIdx.x + r * NORM_THREADS;
        w[r] = i < HIDDEN_SIZE ? weight[i] : 0.0f;
    }
    WAIT_FOR_PREVIOUS();
    const float* row = x + (long)blockIdx.x * HIDDEN_SIZE;
    float sum = 0;
    #pragma unroll
    for (int r = 0; r < NORM_PER_THREAD; r++)
    {
        int i = threadIdx.x + r * NORM_THREADS;
        v[r] = i < HIDDEN_SIZE ? row[i] : 0.0f;
        sum += v[r] * v[r];
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = sum;
    __syncthreads();
    float total = 0;
    for (int p = 0; p < NORM_THREADS / 32; p++) total += partial[p];
    float scale = rsqrtf(total / HIDDEN_SIZE + epsilon);
    #pragma unroll
    for (int r = 0; r < NORM_PER_THREAD; r++)
    {
        int i = threadIdx.x + r * NORM_THREADS;
        if (i < HIDDEN_SIZE) out[(long)blockIdx.x * HIDDEN_SIZE + i] = operand_store(v[r] * scale * w[r]);
    }
}

// Rotates token t's key heads by its position and stores K and V in its block slot of `layer`; one thread per
// (KV head, RoPE pair), which moves that pair of K and of V. k, v: rows of the fused q/k/v product; blocks/slots: per token.
extern "C" __global__ void kv_append(const float* k, const float* v, kv_t* pool, int layer, const int* blocks, const int* slots,
    const int* positions, int interleaved)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    int token = blockIdx.x;
    kv_t* kplane = pool + blocks[token] * BLOCK_ELEMENTS + (2L * layer) * PLANE_ELEMENTS;
    kv_t* vplane = kplane + PLANE_ELEMENTS;
    for (int p = threadIdx.x; p < KV_HEADS * ROPE_PAIRS; p += blockDim.x)
    {
        int g = p / ROPE_PAIRS, i = p % ROPE_PAIRS;
        const float* v_row = v + (long)token * QKV_WIDTH + g * HEAD_DIM;
        RotatedPair r = rotate_pair(k + (long)token * QKV_WIDTH + g * HEAD_DIM, i, positions[token], interleaved);
        long at = ((long)g * BLOCK_TOKENS + slots[token]) * HEAD_DIM;
        kplane[at + r.a] = kv_store(r.va);
        kplane[at + r.b] = kv_store(r.vb);
        vplane[at + r.a] = kv_store(v_row[r.a]);
        vplane[at + r.b] = kv_store(v_row[r.b]);
    }
}

// Packets the store keeps as int8 pages, decoded where they land: slot x of `staged` (slot_bytes apart) holds one block as
// Int8KvBlock.cs lays it out — an f32 scale per segment of BLOCK_TOKENS × HEAD_DIM values (a (layer, K/V, KV head), in
// the cache's order), then the int8 values — and after them the id of the cache block it decodes into. value = scale · q,
// rounded to kv_t as the host's decode rounds it, so a packet is the same bytes whichever side decoded it. grid (slots,
// 2 · LAYERS), a block per K or V plane.
#define SEGMENT_ELEMENTS (BLOCK_TOKENS * HEAD_DIM)
#define SEGMENTS (BLOCK_ELEMENTS / SEGMENT_ELEMENTS)
extern "C" __global__ void kv_decode_int8(const unsigned char* staged, long slot_bytes, kv_t* pool)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    const unsigned char* slot = staged + blockIdx.x * slot_bytes;
    const float* scales = (const float*)slot;
    const char4* levels = (const char4*)(slot + 4 * SEGMENTS);
    int destination = *(const int*)(slot + 4 * SEGMENTS + BLOCK_ELEMENTS);
    kv_t* out = pool + destination * BLOCK_ELEMENTS;
    for (int i = blockIdx.y * (PLANE_ELEMENTS / 4) + threadIdx.x; i < (blockIdx.y + 1) * (PLANE_ELEMENTS / 4); i += blockDim.x)
    {
        char4 q = levels[i];
        float scale = scales[4 * i / SEGMENT_ELEMENTS];
        out[4 * i] = kv_store(scale * (float)q.x);
        out[4 * i + 1] = kv_store(scale * (float)q.y);
        out[4 * i + 2] = kv_store(scale * (float)q.z);
        out[4 * i + 3] = kv_store(scale * (float)q.w);
    }
}

// CacheBlend's private packet copies: rotates every key of blocks[blockIdx.x] (all layers, heads and slots) on by
// `offset` positions — keys computed at local positions become keys at global ones (rotations compose). grid (copies,
// LAYERS), one thread per (KV head, slot, RoPE pair).
extern "C" __global__ void kv_rotate_keys(kv_t* pool, const int* blocks, int offset, int interleaved)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    kv_t* kplane = pool + blocks[blockIdx.x] * BLOCK_ELEMENTS + (2L * blockIdx.y) * PLANE_ELEMENTS;
    for (int p = threadIdx.x; p < KV_HEADS * BLOCK_TOKENS * ROPE_PAIRS; p += blockDim.x)
    {
        kv_t* key = kplane + (long)(p / ROPE_PAIRS) * HEAD_DIM;   // (head, slot) rows are consecutive: [KV_HEADS][BLOCK_TOKENS][HEAD_DIM]
        float row[HEAD_DIM];
        int i = p % ROPE_PAIRS;
        int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + ROPE_PAIRS;
        row[a] = kv_load(key[a]);
        row[b] = kv_load(key[b]);
        RotatedPair r = rotate_pair(row, i, offset, interleaved);
        key[r.a] = kv_store(r.va);
        key[r.b] = kv_store(r.vb);
    }
}

// CacheBlend's selection: how far token t's recomputed layer-`layer` K (rotated at its position) and V, rows of the
// fused q/k/v product, lie from what its slot holds — Σ (new − stored)² over every KV head and dimension. One block
// of 256 threads per token.
extern "C" __global__ void kv_deviation(const float* qkv, const kv_t* pool, int layer, const int* blocks, const int* slots, const int* positions,
    int interleaved, float* deviation)
{
    __shared__ float partial[8];
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    int token = blockIdx.x;
    const kv_t* kplane = pool + blocks[token] * BLOCK_ELEMENTS + (2L * layer) * PLANE_ELEMENTS;
    const kv_t* vplane = kplane + PLANE_ELEMENTS;
    const float* k = qkv + (long)token * QKV_WIDTH + HEADS * HEAD_DIM;
    const float* v = k + KV_HEADS * HEAD_DIM;
    float sum = 0;
    for (int p = threadIdx.x; p < KV_HEADS * ROPE_PAIRS; p += blockDim.x)
    {
        int g = p / ROPE_PAIRS, i = p % ROPE_PAIRS;
        RotatedPair r = rotate_pair(k + g * HEAD_DIM, i, positions[token], interleaved);
        long at = ((long)g * BLOCK_TOKENS + slots[token]) * HEAD_DIM;
        float dka = r.va - kv_load(kplane[at + r.a]), dkb = r.vb - kv_load(kplane[at + r.b]);
        float dva = v[g * HEAD_DIM + r.a] - kv_load(vplane[at + r.a]), dvb = v[g * HEAD_DIM + r.b] - kv_load(vplane[at + r.b]);
        sum += dka * dka + dkb * dkb + dva * dva + dvb * dvb;
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0)
    {
        float total = 0;
        for (int w = 0; w < blockDim.x / 32; w++) total += partial[w];
        deviation[token] = total;
    }
}

// Matrix × a few vectors, for decode: y[t][row] (=, or += with accumulate) Σ_c W[row][c]·x[t][c] for t < tokens
// (≤ GEMV_TOKENS), W [rows][cols] and x [tokens][cols] of operand_t, y f32. One warp per row streams the row once with
// 16-byte loads and applies it to every token, so the whole grid reads W once at full width; a GEMM's tiles leave most
// SMs idle when there is one token. Needs cols·sizeof(operand_t) to be a multiple of 16 (the runtime checks).
#define GEMV_TOKENS 8
#define GEMV_LANE_ELEMENTS (16 / (int)sizeof(operand_t))
__device__ __forceinline__ void unpack(uint4 bits, float* out)
{
#ifdef OPERAND_BF16
    const __nv_bfloat162* pairs = (const __nv_bfloat162*)&bits;
    for (int i = 0; i < 4; i++) { float2 f = __bfloat1622float2(pairs[i]); out[2 * i] = f.x; out[2 * i + 1] = f.y; }
#else
    out[0] = __uint_as_float(bits.x); out[1] = __uint_as_float(bits.y); out[2] = __uint_as_float(bits.z); out[3] = __uint_as_float(bits.w);
#endif
}
// A block is 8 warps; warps_per_row (1, 2, 4 or 8) of them share a row, interleaving its 16-byte chunks, so a matrix
// with few rows still puts enough loads in flight on every SM.
extern "C" __global__ void gemv(const operand_t* w, const operand_t* x, float* y, int rows, int cols, int tokens, int accumulate, int warps_per_row)
{
    __shared__ float partial[8][GEMV_TOKENS];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * (8 / warps_per_row) + warp / warps_per_row, part = warp % warps_per_row;
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    float acc[GEMV_TOKENS];
    for (int t = 0; t < GEMV_TOKENS; t++) acc[t] = 0;
    if (row < rows)
    {
        const operand_t* weights = w + (long)row * cols;
        #pragma unroll 4
        for (int c = (part * 32 + lane) * GEMV_LANE_ELEMENTS; c < cols; c += warps_per_row * 32 * GEMV_LANE_ELEMENTS)
        {
            float wf[GEMV_LANE_ELEMENTS], xf[GEMV_LANE_ELEMENTS];
            unpack(__ldg((const uint4*)(weights + c)), wf);
            for (int t = 0; t < GEMV_TOKENS; t++)
            {
                if (t >= tokens) break;
                unpack(__ldg((const uint4*)(x + (long)t * cols + c)), xf);
                for (int i = 0; i < GEMV_LANE_ELEMENTS; i++) acc[t] += wf[i] * xf[i];
            }
        }
    }
    for (int t = 0; t < GEMV_TOKENS; t++)
    {
        float sum = acc[t];
        for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
        if (lane == 0) partial[warp][t] = sum;
    }
    __syncthreads();
    if (part == 0 && row < rows && lane < tokens)
    {
        float sum = 0;
        for (int p = 0; p < warps_per_row; p++) sum += partial[warp + p][lane];
        long at = (long)lane * rows + row;
        y[at] = accumulate ? y[at] + sum : sum;
    }
}

// The same product for one token (a batch-1 decode step), y[row] (=, or +=) Σ_c W[row][c]·x[c], for the model's three
// column counts (gemv_one_hidden: HIDDEN_SIZE, gemv_one_query: HEADS·HEAD_DIM, gemv_one_ffn: INTERMEDIATE_SIZE), and
// gemv_one_swiglu: the gate/up product with SwiGLU applied, out[i] = silu(gate_i · x) · (up_i · x), from the fused
// matrix whose rows interleave gate and up (2i, 2i + 1). GEMV_SPLIT(COLS) warps share a row (each a contiguous slice
// of 2–4 KB), the loop unrolled at compile time so up to GEMV_BATCH 16-byte weight loads per lane are in flight,
// weights read around L1 (they are used once); the slices' sums meet in shared memory in a fixed order. Measured on
// the H100 (benchmarks/gpu/gemv_bench.cu): 0.9–0.99 of the copy bandwidth for the gate/up and down matrices of
// Llama-3.2-1B. The first batch of weights is loaded before waiting for the previous kernel: blocks that start while it
// finishes have their weights in flight, so the boundary between two products costs no memory round trip.
// (Asking L2 for the weights instead, before the wait, was slower: NOTES.md.)
// Block 128 threads, 4 / GEMV_SPLIT(COLS) rows per block; the slice must be a whole number of 16-byte chunks (the
// runtime checks COLS · sizeof(operand_t) % 16).
#define GEMV_BATCH 16   // 16-byte loads in flight per lane (fewer when the slice is shorter)
#define GEMV_SPLIT(cols) ((cols) * (int)sizeof(operand_t) >= 16384 && (cols) % (4 * GEMV_LANE_ELEMENTS) == 0 ? 4 : \
                          (cols) * (int)sizeof(operand_t) >= 4096 && (cols) % (2 * GEMV_LANE_ELEMENTS) == 0 ? 2 : 1)
// A lane's share of a row slice of COLS operands: 16-byte chunks lane, lane + 32, …, taken BATCH at a time.
template <int COLS>
struct RowSlice
{
    static constexpr int CHUNKS = COLS / GEMV_LANE_ELEMENTS, PER_LANE = (CHUNKS + 31) / 32, BATCH = PER_LANE < GEMV_BATCH ? PER_LANE : GEMV_BATCH;
    // Starts the loads of the batch beginning at this lane's chunk `first` into wv.
    static __device__ __forceinline__ void load(const uint4* weights, int first, int lane, uint4* wv)
    {
        #pragma unroll
        for (int i = 0; i < BATCH; i++)
        {
            int chunk = (first + i) * 32 + lane;
            if (first + i < PER_LANE && chunk < CHUNKS)
                asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                    : "=r"(wv[i].x), "=r"(wv[i].y), "=r"(wv[i].z), "=r"(wv[i].w) : "l"(weights + chunk));
        }
    }
    // acc += the batch in wv (from chunk `first`) · the input's matching chunks.
    static __device__ __forceinline__ void dot(const uint4* wv, const uint4* input, int first, int lane, float& acc)
    {
        #pragma unroll
        for (int i = 0; i < BATCH; i++)
        {
            int chunk = (first + i) * 32 + lane;
            if (first + i < PER_LANE && chunk < CHUNKS)
            {
                float wf[GEMV_LANE_ELEMENTS], xf[GEMV_LANE_ELEMENTS];
                unpack(wv[i], wf);
                unpack(__ldg(input + chunk), xf);
                #pragma unroll
                for (int k = 0; k < GEMV_LANE_ELEMENTS; k++) acc += wf[k] * xf[k];
            }
        }
    }
};
template <int COLS, int ROWS>   // ROWS 1: a plain product into y; 2: a gate/up pair into swiglu_out
__device__ __forceinline__ void gemv_one_units(const operand_t* w, const operand_t* x, float* y, operand_t* swiglu_out, int units, int accumulate)
{
    constexpr int SPLIT = GEMV_SPLIT(COLS), SLICE = COLS / SPLIT;
    typedef RowSlice<SLICE> Slice;
    __shared__ float partial[4][ROWS];
    LAUNCH_DEPENDENTS();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int unit = blockIdx.x * (4 / SPLIT) + warp / SPLIT, part = warp % SPLIT;
    const operand_t* slice = w + (long)unit * ROWS * COLS + part * SLICE;
    uint4 wv[ROWS][Slice::BATCH];
    if (unit < units)
        for (int r = 0; r < ROWS; r++) Slice::load((const uint4*)(slice + (long)r * COLS), 0, lane, wv[r]);
    WAIT_FOR_PREVIOUS();
    const uint4* input = (const uint4*)(x + part * SLICE);
    float dot[ROWS];
    for (int r = 0; r < ROWS; r++)
    {
        dot[r] = 0;
        if (unit < units)
        {
            Slice::dot(wv[r], input, 0, lane, dot[r]);
            #pragma unroll
            for (int first = Slice::BATCH; first < Slice::PER_LANE; first += Slice::BATCH)
            {
                Slice::load((const uint4*)(slice + (long)r * COLS), first, lane, wv[r]);
                Slice::dot(wv[r], input, first, lane, dot[r]);
            }
        }
        for (int offset = 16; offset > 0; offset /= 2) dot[r] += __shfl_xor_sync(0xffffffff, dot[r], offset);
        if (lane == 0) partial[warp][r] = dot[r];
    }
    if (SPLIT > 1) __syncthreads();
    if (part != 0 || lane != 0 || unit >= units) return;
    float sum[ROWS];
    for (int r = 0; r < ROWS; r++)
    {
        sum[r] = 0;
        for (int p = 0; p < SPLIT; p++) sum[r] += partial[warp + p][r];
    }
    if (ROWS == 1) y[unit] = accumulate ? y[unit] + sum[0] : sum[0];
    else swiglu_out[unit] = operand_store(sum[0] / (1.0f + expf(-sum[0])) * sum[ROWS - 1]);
}
extern "C" __global__ void gemv_one_hidden(const operand_t* w, const operand_t* x, float* y, int rows, int accumulate)
{
    gemv_one_units<HIDDEN_SIZE, 1>(w, x, y, 0, rows, accumulate);
}
extern "C" __global__ void gemv_one_query(const operand_t* w, const operand_t* x, float* y, int rows, int accumulate)
{
    gemv_one_units<HEADS * HEAD_DIM, 1>(w, x, y, 0, rows, accumulate);
}
extern "C" __global__ void gemv_one_ffn(const operand_t* w, const operand_t* x, float* y, int rows, int accumulate)
{
    gemv_one_units<INTERMEDIATE_SIZE, 1>(w, x, y, 0, rows, accumulate);
}
extern "C" __global__ void gemv_one_swiglu(const operand_t* w, const operand_t* x, operand_t* out, int width)
{
    gemv_one_units<HIDDEN_SIZE, 2>(w, x, 0, out, width, 0);
}

// out[token][c] = silu(gate) · up from the fused product's row, whose columns interleave gate and up (2c, 2c + 1);
// count = tokens · width.
extern "C" __global__ void swiglu(const float* gate_up, operand_t* out, long count)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x)
    {
        float2 gu = ((const float2*)gate_up)[i];
        out[i] = operand_store(gu.x / (1.0f + expf(-gu.x)) * gu.y);
    }
}

// x[token][i] += bias[i] for rows of n floats.
extern "C" __global__ void add_bias(float* x, const float* bias, int n)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[(long)blockIdx.x * n + i] += bias[i];
}

// result[token] = argmax of logits[token][0..n) (lowest index on ties); one block per token.
extern "C" __global__ void argmax(const float* logits, int n, int* result)
{
    __shared__ float best_value[32];
    __shared__ int best_index[32];
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    const float* row = logits + (long)blockIdx.x * n;
    float value = NEG_INF;
    int index = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (row[i] > value) { value = row[i]; index = i; }
    for (int offset = 16; offset > 0; offset /= 2)
    {
        float other = __shfl_xor_sync(0xffffffff, value, offset);
        int other_index = __shfl_xor_sync(0xffffffff, index, offset);
        if (other > value || (other == value && other_index < index)) { value = other; index = other_index; }
    }
    if ((threadIdx.x & 31) == 0) { best_value[threadIdx.x / 32] = value; best_index[threadIdx.x / 32] = index; }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        for (int w = 1; w < (blockDim.x + 31) / 32; w++)
            if (best_value[w] > value || (best_value[w] == value && best_index[w] < index)) { value = best_value[w]; index = best_index[w]; }
        result[blockIdx.x] = index;
    }
}

// out[i] = x[rows[i]] for rows of n floats; one block per gathered row.
extern "C" __global__ void gather_rows(const float* x, const int* rows, float* out, int n)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    const float* row = x + (long)rows[blockIdx.x] * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(long)blockIdx.x * n + i] = row[i];
}

// A prefill tile's query rows rotated by (position − rotation) into shared memory: row r is head r % GROUP_SIZE of KV
// head g's group for token r / GROUP_SIZE of the tile; rows past the tile's tokens become zeros.
__device__ void rotate_tile_queries(const float* q, float* query, int rows, int tile_tokens, int first_token, int first_position,
    int rotation, int g, int interleaved)
{
    for (int idx = threadIdx.x; idx < rows * ROPE_PAIRS; idx += blockDim.x)
    {
        int r = idx / ROPE_PAIRS, i = idx % ROPE_PAIRS, t = r / GROUP_SIZE, h = r % GROUP_SIZE;
        // A row past the tile rotates its last token's query and stores zeros.
        int token = first_token + min(t, tile_tokens - 1);
        RotatedPair rotated = rotate_pair(q + (long)token * QKV_WIDTH + (g * GROUP_SIZE + h) * HEAD_DIM, i,
            first_position + token - rotation, interleaved);
        query[r * HEAD_DIM + rotated.a] = t < tile_tokens ? rotated.va : 0.0f;
        query[r * HEAD_DIM + rotated.b] = t < tile_tokens ? rotated.vb : 0.0f;
    }
}

// Prefill attention for one chunk of consecutive positions of one sequence (flash-attention style): a block takes a
// tile of QTILE tokens × the GROUP_SIZE query heads of one KV head, streams the sequence's KV blocks through shared
// memory once for all of them, and keeps an online softmax (running max, sum and output row) per query row.
// grid (ceil(tokens / QTILE), KV_HEADS); the chunk's tokens are 0..tokens-1 with positions first_position + t.
#define QTILE_RAW (2048 / (GROUP_SIZE * HEAD_DIM))
#define QTILE (QTILE_RAW < 1 ? 1 : (QTILE_RAW > 16 ? 16 : QTILE_RAW))
#define QROWS (QTILE * GROUP_SIZE)
extern "C" __global__ void attention_prefill(const float* q, const kv_t* pool, int layer, const KvEntry* table, int entries_count,
    int tokens, int first_position, float scale, int interleaved, operand_t* out)
{
    __shared__ float query[QROWS * HEAD_DIM];
    __shared__ float acc[QROWS * HEAD_DIM];
    __shared__ float keys[BLOCK_TOKENS * (HEAD_DIM + 1)];   // rows padded by one: the score loop reads a column across rows
    __shared__ float values[BLOCK_TOKENS * HEAD_DIM];
    __shared__ float p[QROWS * BLOCK_TOKENS];
    __shared__ float row_max[QROWS], row_sum[QROWS], row_scale[QROWS];
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    int tile = blockIdx.x, g = blockIdx.y;
    int first_token = tile * QTILE, tile_tokens = min(QTILE, tokens - first_token);
    int last_position = first_position + first_token + tile_tokens - 1;
    for (int i = threadIdx.x; i < QROWS * HEAD_DIM; i += blockDim.x) acc[i] = 0;
    for (int r = threadIdx.x; r < QROWS; r += blockDim.x) { row_max[r] = NEG_INF; row_sum[r] = 0; }
    int rotation = -2147483647;

    for (int e = 0; e < entries_count; e++)
    {
        KvEntry entry = table[e];
        if (entry.first_position > last_position) break;
        __syncthreads();
        if (entry.rotation != rotation)
        {
            rotation = entry.rotation;
            rotate_tile_queries(q, query, QROWS, tile_tokens, first_token, first_position, rotation, g, interleaved);
        }
        const kv_t* kplane = pool + entry.block * BLOCK_ELEMENTS + (2L * layer) * PLANE_ELEMENTS + ((long)g * BLOCK_TOKENS + entry.first_slot) * HEAD_DIM;
        const kv_t* vplane = kplane + PLANE_ELEMENTS;
        for (int i = threadIdx.x; i < entry.count * HEAD_DIM; i += blockDim.x)
        {
            keys[(i / HEAD_DIM) * (HEAD_DIM + 1) + i % HEAD_DIM] = kv_load(kplane[i]);
            values[i] = kv_load(vplane[i]);
        }
        __syncthreads();
        // Scores, masked causally (a key after the token's position gets no weight).
        for (int idx = threadIdx.x; idx < QROWS * BLOCK_TOKENS; idx += blockDim.x)
        {
            int r = idx / BLOCK_TOKENS, j = idx % BLOCK_TOKENS, t = r / GROUP_SIZE;
            float score = NEG_INF;
            if (j < entry.count && t < tile_tokens && entry.first_position + j <= first_position + first_token + t)
            {
                float dot = 0;
                for (int d = 0; d < HEAD_DIM; d++) dot += query[r * HEAD_DIM + d] * keys[j * (HEAD_DIM + 1) + d];
                score = dot * scale;
            }
            p[idx] = score;
        }
        __syncthreads();
        // Online softmax: new running max, rescale of what was summed so far, this block's probabilities.
        for (int r = threadIdx.x; r < QROWS; r += blockDim.x)
        {
            float m = row_max[r];
            for (int j = 0; j < BLOCK_TOKENS; j++) m = fmaxf(m, p[r * BLOCK_TOKENS + j]);
            float old_scale = m == NEG_INF ? 1.0f : __expf(row_max[r] - m);
            float sum = row_sum[r] * old_scale;
            for (int j = 0; j < BLOCK_TOKENS; j++)
            {
                float v = p[r * BLOCK_TOKENS + j] == NEG_INF ? 0.0f : __expf(p[r * BLOCK_TOKENS + j] - m);
                p[r * BLOCK_TOKENS + j] = v;
                sum += v;
            }
            row_max[r] = m;
            row_sum[r] = sum;
            row_scale[r] = old_scale;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < QROWS * HEAD_DIM; idx += blockDim.x)
        {
            int r = idx / HEAD_DIM, d = idx % HEAD_DIM;
            float a = acc[idx] * row_scale[r];
            for (int j = 0; j < entry.count; j++) a += p[r * BLOCK_TOKENS + j] * values[j * HEAD_DIM + d];
            acc[idx] = a;
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < QROWS * HEAD_DIM; idx += blockDim.x)
    {
        int r = idx / HEAD_DIM, d = idx % HEAD_DIM, t = r / GROUP_SIZE, h = r % GROUP_SIZE;
        if (t < tile_tokens) out[((long)(first_token + t) * HEADS + g * GROUP_SIZE + h) * HEAD_DIM + d] = operand_store(acc[idx] / row_sum[r]);
    }
}

#if !defined(KV_F32) && (HEAD_DIM % 16 == 0) && (BLOCK_TOKENS == 16)
// attention_prefill on the tensor cores, FlashAttention-2 style (f16 KV, head dim a multiple of 16): a block is
// FA_WARPS warps of 16 query rows — the GROUP_SIZE heads of FA_TOKENS consecutive tokens, all reading one KV head.
// K/V steps of FA_STEP_KEYS keys (runs of entries sharing one rotation) are copied into shared memory with cp.async,
// the next step while this one computes. S = Q·Kᵀ and O += P·V are mma.sync m16n8k16 (f16 in, f32 accumulate); the
// scores, the online softmax and the output stay in registers. The layouts of the fragments are PTX's: in a warp, lane
// = 4·group + quad holds rows group and group + 8, columns 2·quad, 2·quad + 1 (+ 8) of each 16×16 or 16×8 tile.
// grid (ceil(tokens / FA_TOKENS), KV_HEADS, splits), block FA_WARPS · 32 threads. With splits > 1 (few tiles over a
// long context: a query after its packets) split z takes entries [z · per_split, (z + 1) · per_split) and writes its
// rows' (max, sum) in the log2 domain and unnormalised outputs to partial_ml / partial_acc ([tokens][HEADS][splits]);
// attention_merge combines them. `positions` (or null: consecutive from first_position) places the tokens.
#define FA_WARPS 4
#define FA_ROWS (FA_WARPS * 16)
#define FA_TOKENS (FA_ROWS / GROUP_SIZE < 1 ? 1 : FA_ROWS / GROUP_SIZE)
#define FA_STEP_KEYS (HEAD_DIM <= 64 ? 64 : 32)
#define FA_STEP_ENTRIES (FA_STEP_KEYS / BLOCK_TOKENS)
#define FA_STRIDE (HEAD_DIM + 8)   // halves per shared row: 16 bytes of padding put ldmatrix's 8 row reads on distinct banks

__device__ __forceinline__ unsigned shared_address(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
// 16 bytes global → shared without passing through registers; zeros when !present.
__device__ __forceinline__ void copy_async_16(void* destination, const void* source, bool present)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(shared_address(destination)), "l"(source), "r"(present ? 16 : 0));
}
__device__ __forceinline__ void load_matrix_x4(unsigned* r, const __half* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(p)));
}
__device__ __forceinline__ void load_matrix_x4_transposed(unsigned* r, const __half* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(p)));
}
// d (16×8, f32) += a (16×16 f16, row-major) · b (16×8 f16, column-major).
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned pack_half2(float low, float high)
{
    __half2 h = __floats2half2_rn(low, high);
    return *(unsigned*)&h;
}
// Column `column` of a query row rotated by `position` (both members of each RoPE pair are read from the f32 row).
__device__ __forceinline__ float rotated_column(const float* row, int column, int position, int interleaved)
{
    RotatedPair pair = rotate_pair(row, interleaved ? column / 2 : column % ROPE_PAIRS, position, interleaved);
    return column == pair.a ? pair.va : pair.vb;
}
// The next step: up to FA_STEP_ENTRIES entries from `e` sharing its rotation and starting no later than last_position.
__device__ __forceinline__ int step_end(const KvEntry* table, int e, int entries_count, int last_position)
{
    int end = e + 1;
    while (end < entries_count && end - e < FA_STEP_ENTRIES && table[end].rotation == table[e].rotation && table[end].first_position <= last_position) end++;
    return end;
}
// Queues the copies of entries [begin, end) into one stage (absent keys become zeros at position INT_MAX).
__device__ __forceinline__ void load_step(const kv_t* pool, int layer, int g, const KvEntry* table, int begin, int end, __half* keys, __half* values, int* key_position)
{
    for (int i = threadIdx.x; i < FA_STEP_KEYS * (HEAD_DIM / 8); i += blockDim.x)
    {
        int key = i / (HEAD_DIM / 8), chunk = i % (HEAD_DIM / 8), e = begin + key / BLOCK_TOKENS, j = key % BLOCK_TOKENS;
        bool present = e < end && j < table[e].count;
        const kv_t* k = pool;
        if (present)
        {
            KvEntry entry = table[e];
            k = pool + entry.block * BLOCK_ELEMENTS + (2L * layer) * PLANE_ELEMENTS + ((long)g * BLOCK_TOKENS + entry.first_slot + j) * HEAD_DIM + chunk * 8;
        }
        copy_async_16(keys + key * FA_STRIDE + chunk * 8, k, present);
        copy_async_16(values + key * FA_STRIDE + chunk * 8, present ? k + PLANE_ELEMENTS : pool, present);
    }
    for (int key = threadIdx.x; key < FA_STEP_KEYS; key += blockDim.x)
    {
        int e = begin + key / BLOCK_TOKENS, j = key % BLOCK_TOKENS;
        key_position[key] = e < end && j < table[e].count ? table[e].first_position + j : 2147483647;
    }
    asm volatile("cp.async.commit_group;");
}

extern "C" __global__ void __launch_bounds__(FA_WARPS * 32) attention_prefill_mma(const float* q, const kv_t* pool, int layer, const KvEntry* table,
    int entries_count, int tokens, int first_position, float scale, int interleaved, int per_split, float2* partial_ml, float* partial_acc,
    const int* positions, operand_t* out)
{
    __shared__ __align__(16) __half keys[2][FA_STEP_KEYS * FA_STRIDE];
    __shared__ __align__(16) __half values[2][FA_STEP_KEYS * FA_STRIDE];
    __shared__ int key_position[2][FA_STEP_KEYS];
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    int tile = gridDim.x - 1 - blockIdx.x;   // the longest tiles (latest tokens) first
    int g = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, group = lane >> 2, quad = lane & 3;
    int first_token = tile * FA_TOKENS, tile_tokens = min(FA_TOKENS, tokens - first_token);
    // Token t sits at first_position + t, or at positions[t] when given (CacheBlend's scattered recompute; ascending).
    int last_position = positions ? positions[first_token + tile_tokens - 1] : first_position + first_token + tile_tokens - 1;
    // This thread's two rows (group and group + 8 of its warp's 16); rows past the tile's real ones compute as its last row and are not written.
    int row_position[2], row_token[2], row_head[2];
    bool row_real[2];
    for (int i = 0; i < 2; i++)
    {
        int r = warp * 16 + group + 8 * i;
        row_real[i] = r < tile_tokens * GROUP_SIZE;
        int real = row_real[i] ? r : tile_tokens * GROUP_SIZE - 1;
        row_token[i] = real / GROUP_SIZE;
        row_head[i] = real % GROUP_SIZE;
        row_position[i] = positions ? positions[first_token + row_token[i]] : first_position + first_token + row_token[i];
    }
    const float scale_log2 = scale * 1.4426950408889634f;

    unsigned query[HEAD_DIM / 16][4];
    float o[HEAD_DIM / 8][4];
    for (int n = 0; n < HEAD_DIM / 8; n++) for (int c = 0; c < 4; c++) o[n][c] = 0;
    float row_max[2] = { NEG_INF, NEG_INF }, row_sum[2] = { 0, 0 };
    int rotation = -2147483647, stage = 0;

    int begin = min(entries_count, (int)blockIdx.z * per_split), limit = min(entries_count, begin + per_split);
    int e = begin, end = begin < limit && table[begin].first_position <= last_position ? step_end(table, begin, limit, last_position) : begin;
    if (end > begin) load_step(pool, layer, g, table, begin, end, keys[0], values[0], key_position[0]);
    while (e < end)
    {
        bool more = end < limit && table[end].first_position <= last_position;
        int next_end = more ? step_end(table, end, limit, last_position) : end;
        if (more) load_step(pool, layer, g, table, end, next_end, keys[stage ^ 1], values[stage ^ 1], key_position[stage ^ 1]);
        if (more) asm volatile("cp.async.wait_group 1;"); else asm volatile("cp.async.wait_group 0;");
        __syncthreads();

        if (table[e].rotation != rotation)
        {
            // The A fragments of this warp's 16 query rows, rotated by (position − rotation): every lane holds both
            // members of each RoPE pair it needs, so this is registers only.
            rotation = table[e].rotation;
            for (int i = 0; i < 2; i++)
            {
                const float* row = q + (long)(first_token + row_token[i]) * QKV_WIDTH + (g * GROUP_SIZE + row_head[i]) * HEAD_DIM;
                for (int kd = 0; kd < HEAD_DIM / 16; kd++)
                    for (int half = 0; half < 2; half++)
                    {
                        int column = kd * 16 + half * 8 + 2 * quad;
                        query[kd][i + 2 * half] = pack_half2(rotated_column(row, column, row_position[i] - rotation, interleaved),
                            rotated_column(row, column + 1, row_position[i] - rotation, interleaved));
                    }
            }
        }

        // S = Q·Kᵀ: FA_STEP_KEYS / 8 tiles of 16 rows × 8 keys.
        const __half* k_stage = keys[stage];
        float s[FA_STEP_KEYS / 8][4];
        #pragma unroll
        for (int n = 0; n < FA_STEP_KEYS / 8; n++) for (int c = 0; c < 4; c++) s[n][c] = 0;
        #pragma unroll
        for (int kc = 0; kc < FA_STEP_KEYS / 16; kc++)
        {
            #pragma unroll
            for (int kd = 0; kd < HEAD_DIM / 16; kd++)
            {
                unsigned b[4];
                load_matrix_x4(b, k_stage + (kc * 16 + (lane & 7) + ((lane >> 4) << 3)) * FA_STRIDE + kd * 16 + ((lane >> 3) & 1) * 8);
                mma_16816(s[2 * kc], query[kd], b[0], b[1]);
                mma_16816(s[2 * kc + 1], query[kd], b[2], b[3]);
            }
        }

        // Online softmax in the log2 domain; a key after a row's position (or absent) gets no weight.
        #pragma unroll
        for (int i = 0; i < 2; i++)
        {
            float m = row_max[i];
            #pragma unroll
            for (int n = 0; n < FA_STEP_KEYS / 8; n++)
                #pragma unroll
                for (int c = 0; c < 2; c++)
                {
                    float v = key_position[stage][n * 8 + 2 * quad + c] <= row_position[i] ? s[n][2 * i + c] * scale_log2 : NEG_INF;
                    s[n][2 * i + c] = v;
                    m = fmaxf(m, v);
                }
            m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 1));
            m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 2));
            float base = m == NEG_INF ? 0.0f : m;   // a row with nothing visible yet keeps zeros
            float alpha = exp2f(row_max[i] - base), sum = 0;
            #pragma unroll
            for (int n = 0; n < FA_STEP_KEYS / 8; n++)
                #pragma unroll
                for (int c = 0; c < 2; c++)
                {
                    float p = exp2f(s[n][2 * i + c] - base);
                    s[n][2 * i + c] = p;
                    sum += p;
                }
            row_max[i] = m;
            row_sum[i] = row_sum[i] * alpha + sum;
            #pragma unroll
            for (int n = 0; n < HEAD_DIM / 8; n++) { o[n][2 * i] *= alpha; o[n][2 * i + 1] *= alpha; }
        }

        // O += P·V: the score tiles of 16 keys are already P's A fragments; V's B fragments come transposed by ldmatrix.
        const __half* v_stage = values[stage];
        #pragma unroll
        for (int kc = 0; kc < FA_STEP_KEYS / 16; kc++)
        {
            unsigned p[4] = { pack_half2(s[2 * kc][0], s[2 * kc][1]), pack_half2(s[2 * kc][2], s[2 * kc][3]),
                              pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]), pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3]) };
            #pragma unroll
            for (int dp = 0; dp < HEAD_DIM / 16; dp++)
            {
                unsigned b[4];
                load_matrix_x4_transposed(b, v_stage + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * FA_STRIDE + dp * 16 + ((lane >> 4) << 3));
                mma_16816(o[2 * dp], p, b[0], b[1]);
                mma_16816(o[2 * dp + 1], p, b[2], b[3]);
            }
        }
        __syncthreads();   // this stage is refilled two steps on
        stage ^= 1;
        e = end;
        end = next_end;
    }

    for (int i = 0; i < 2; i++)
    {
        float sum = row_sum[i];
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        sum += __shfl_xor_sync(0xffffffff, sum, 2);
        if (!row_real[i]) continue;
        long head_row = (long)(first_token + row_token[i]) * HEADS + g * GROUP_SIZE + row_head[i];
        if (gridDim.z > 1)
        {
            long part = head_row * gridDim.z + blockIdx.z;
            if (quad == 0) partial_ml[part] = make_float2(row_max[i], sum);
            float* acc = partial_acc + part * HEAD_DIM;
            for (int n = 0; n < HEAD_DIM / 8; n++) { acc[n * 8 + 2 * quad] = o[n][2 * i]; acc[n * 8 + 2 * quad + 1] = o[n][2 * i + 1]; }
            continue;
        }
        float inverse = sum > 0 ? 1.0f / sum : 0.0f;
        operand_t* row = out + head_row * HEAD_DIM;
        for (int n = 0; n < HEAD_DIM / 8; n++)
        {
            row[n * 8 + 2 * quad] = operand_store(o[n][2 * i] * inverse);
            row[n * 8 + 2 * quad + 1] = operand_store(o[n][2 * i + 1] * inverse);
        }
    }
}

// Combines attention_prefill_mma's splits: each split's rows weighted by 2^(its max − the overall max), the outputs
// summed and divided by the weighted sums. grid (tokens, HEADS), block HEAD_DIM threads (one per dimension).
extern "C" __global__ void attention_merge(const float2* partial_ml, const float* partial_acc, int splits, operand_t* out)
{
    LAUNCH_DEPENDENTS();
    WAIT_FOR_PREVIOUS();
    long row = (long)blockIdx.x * HEADS + blockIdx.y;
    const float2* ml = partial_ml + row * splits;
    float m = NEG_INF;
    for (int s = 0; s < splits; s++) m = fmaxf(m, ml[s].x);
    float base = m == NEG_INF ? 0.0f : m, total = 0, value = 0;
    for (int s = 0; s < splits; s++)
    {
        float weight = exp2f(ml[s].x - base);
        total += ml[s].y * weight;
        value += partial_acc[(row * splits + s) * HEAD_DIM + threadIdx.x] * weight;
    }
    out[row * HEAD_DIM + threadIdx.x] = operand_store(total > 0 ? value / total : 0.0f);
}
#endif
