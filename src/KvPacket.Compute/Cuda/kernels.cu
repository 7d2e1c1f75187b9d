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
__device__ __forceinline__ kv_t kv_store(float x) { return x; }
#else
typedef __half kv_t;
__device__ __forceinline__ float kv_load(kv_t x) { return __half2float(x); }
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

// cos/sin of position * inv_freq[i]: the angle taken and reduced to [−π, π] in float64 (as exact as the CPU's float64
// angle), then sincosf — float64 sin/cos cost more than the rest of a decode attention kernel.
__device__ __forceinline__ void rope_angle(int position, int i, float* c, float* s)
{
    double angle = (double)position * ROPE_INV_FREQ[i];
    angle -= 6.283185307179586 * rint(angle * 0.15915494309189535);
    sincosf((float)angle, s, c);
}

// One block table entry: block id, first position it holds, token count, rotation offset, first slot.
struct KvEntry { int block; int first_position; int count; int rotation; int first_slot; };

// Causal GQA attention, flash-decoding style: the block table of each token's sequence is cut into splits of
// `per_split` entries; attention_partial computes, for one (token, KV head, split), each of the GROUP_SIZE query
// heads' local max m, sum l = Σ exp(s − m) and acc = Σ exp(s − m)·v over the split's positions; attention_combine
// merges the splits. Queries are rotated here by (position − rotation offset) per entry, so packet blocks need no
// key rewrite; positions no entry holds (pruned packets) get no attention.
// grid (tokens, KV_HEADS, splits); scores: [tokens][HEADS][max_context]; partial_ml: [tokens][HEADS][splits] (m, l);
// partial_acc: [tokens][HEADS][splits][HEAD_DIM].
extern "C" __global__ void attention_partial(const float* q, const kv_t* pool, int layer, const KvEntry* entries,
    const int* table_start, const int* table_length, const int* token_sequence, const int* token_position,
    float* scores, int max_context, float scale, int interleaved, int per_split, int splits, float2* partial_ml, float* partial_acc)
{
    __shared__ float rotated[GROUP_SIZE * HEAD_DIM];
    __shared__ float reduce[32];
    int token = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
    int sequence = token_sequence[token], position = token_position[token];
    const KvEntry* table = entries + table_start[sequence];
    int first_entry = split * per_split, last_entry = min(first_entry + per_split, table_length[sequence]);
    const float* query = q + (long)token * QKV_WIDTH + g * GROUP_SIZE * HEAD_DIM;
    float* row = scores + ((long)token * HEADS + g * GROUP_SIZE) * max_context;

    int rotation = -2147483647;
    for (int e = first_entry; e < last_entry; e++)
    {
        KvEntry entry = table[e];
        if (entry.first_position > position) { last_entry = e; break; }
        if (entry.rotation != rotation)
        {
            // The query is rotated by (position − the entry's rotation offset): once per run of entries sharing one.
            rotation = entry.rotation;
            __syncthreads();
            for (int p = threadIdx.x; p < GROUP_SIZE * ROPE_PAIRS; p += blockDim.x)
            {
                int h = p / ROPE_PAIRS, i = p % ROPE_PAIRS;
                float c, s;
                rope_angle(position - rotation, i, &c, &s);
                int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + ROPE_PAIRS;
                float va = query[h * HEAD_DIM + a], vb = query[h * HEAD_DIM + b];
                rotated[h * HEAD_DIM + a] = va * c - vb * s;
                rotated[h * HEAD_DIM + b] = va * s + vb * c;
            }
            __syncthreads();
        }
        const kv_t* keys = pool + entry.block * BLOCK_ELEMENTS + (2L * layer) * PLANE_ELEMENTS + ((long)g * BLOCK_TOKENS) * HEAD_DIM;
        int visible = min(entry.count, position + 1 - entry.first_position);
        for (int p = threadIdx.x; p < visible * GROUP_SIZE; p += blockDim.x)
        {
            int j = p / GROUP_SIZE, h = p % GROUP_SIZE;
            const kv_t* k = keys + (long)(entry.first_slot + j) * HEAD_DIM;
            float dot = 0;
            for (int d = 0; d < HEAD_DIM; d++) dot += rotated[h * HEAD_DIM + d] * kv_load(k[d]);
            row[(long)h * max_context + entry.first_position + j] = dot * scale;
        }
    }
    __syncthreads();

    // Softmax statistics: one warp per query head, no block-wide barriers.
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    long first_slot_of_token = ((long)token * HEADS + g * GROUP_SIZE) * splits + split;
    for (int h = warp; h < GROUP_SIZE; h += blockDim.x >> 5)
    {
        float* s = row + (long)h * max_context;
        float max = NEG_INF;
        for (int e = first_entry; e < last_entry; e++)
        {
            KvEntry entry = table[e];
            int visible = min(entry.count, position + 1 - entry.first_position);
            for (int j = lane; j < visible; j += 32) max = fmaxf(max, s[entry.first_position + j]);
        }
        for (int offset = 16; offset > 0; offset /= 2) max = fmaxf(max, __shfl_xor_sync(0xffffffff, max, offset));
        float sum = 0;
        for (int e = first_entry; e < last_entry; e++)
        {
            KvEntry entry = table[e];
            int visible = min(entry.count, position + 1 - entry.first_position);
            for (int j = lane; j < visible; j += 32)
            {
                float v = __expf(s[entry.first_position + j] - max);
                s[entry.first_position + j] = v;
                sum += v;
            }
        }
        for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
        if (lane == 0) partial_ml[first_slot_of_token + (long)h * splits] = make_float2(max, sum);
    }
    __syncthreads();

    // Weighted values: every (head, dimension) pair of the group at once.
    for (int idx = threadIdx.x; idx < GROUP_SIZE * HEAD_DIM; idx += blockDim.x)
    {
        int h = idx / HEAD_DIM, d = idx % HEAD_DIM;
        const float* s = row + (long)h * max_context;
        float acc = 0;
        for (int e = first_entry; e < last_entry; e++)
        {
            KvEntry entry = table[e];
            const kv_t* values = pool + entry.block * BLOCK_ELEMENTS + (2L * layer + 1) * PLANE_ELEMENTS + ((long)g * BLOCK_TOKENS) * HEAD_DIM;
            int visible = min(entry.count, position + 1 - entry.first_position);
            for (int j = 0; j < visible; j++) acc += s[entry.first_position + j] * kv_load(values[(long)(entry.first_slot + j) * HEAD_DIM + d]);
        }
        partial_acc[(first_slot_of_token + (long)h * splits) * HEAD_DIM + d] = acc;
    }
}

// out[token][head] = Σ_s exp(m_s − M)·acc_s / Σ_s exp(m_s − M)·l_s over the splits; grid (tokens, HEADS).
extern "C" __global__ void attention_combine(const float2* partial_ml, const float* partial_acc, int splits, operand_t* out)
{
    // blockDim 64 (two warps): each computes the splits' max and weighted sum with its lanes over the splits, then
    // thread d merges dimension d; the weights exp(m_s − M) go through shared memory so each is computed once.
    __shared__ float weight[1024];
    long head = (long)blockIdx.x * HEADS + blockIdx.y;
    const float2* ml = partial_ml + head * splits;
    int lane = threadIdx.x & 31;
    float max = NEG_INF;
    for (int s = lane; s < splits; s += 32) max = fmaxf(max, ml[s].x);
    for (int offset = 16; offset > 0; offset /= 2) max = fmaxf(max, __shfl_xor_sync(0xffffffff, max, offset));
    float total = 0;
    for (int s = lane; s < splits; s += 32)
    {
        float2 v = ml[s];
        float wgt = v.y > 0 ? __expf(v.x - max) : 0;
        if (threadIdx.x < 32) weight[s] = wgt;
        total += wgt * v.y;
    }
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffff, total, offset);
    __syncthreads();
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x)
    {
        float acc = 0;
        #pragma unroll 8
        for (int s = 0; s < splits; s++) acc += weight[s] * partial_acc[(head * splits + s) * HEAD_DIM + d];
        out[head * HEAD_DIM + d] = operand_store(acc / total);
    }
}

// x[token] = table[ids[token]] for f32 tables [vocab][HIDDEN_SIZE].
extern "C" __global__ void embed(const float* table, const int* ids, float* x)
{
    const float* row = table + (long)ids[blockIdx.x] * HIDDEN_SIZE;
    for (int i = threadIdx.x; i < HIDDEN_SIZE; i += blockDim.x) x[(long)blockIdx.x * HIDDEN_SIZE + i] = row[i];
}

// out[token] = x[token] / rms(x[token]) * weight, rows of n floats; one block per token.
extern "C" __global__ void rms_norm(const float* x, const float* weight, operand_t* out, int n, float epsilon)
{
    __shared__ float partial[32];
    const float* row = x + (long)blockIdx.x * n;
    float sum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += row[i] * row[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = sum;
    __syncthreads();
    float total = 0;
    for (int w = 0; w < (blockDim.x + 31) / 32; w++) total += partial[w];
    float scale = rsqrtf(total / n + epsilon);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(long)blockIdx.x * n + i] = operand_store(row[i] * scale * weight[i]);
}

// Rotates token t's key heads by its position and stores K and V as halves in its block slot of `layer`.
// k, v: [tokens][KV_HEADS * HEAD_DIM]; blocks/slots: per token.
extern "C" __global__ void kv_append(const float* k, const float* v, kv_t* pool, int layer, const int* blocks, const int* slots,
    const int* positions, int interleaved)
{
    int token = blockIdx.x;
    long base = blocks[token] * BLOCK_ELEMENTS;
    kv_t* kplane = pool + base + (2L * layer) * PLANE_ELEMENTS;
    kv_t* vplane = kplane + PLANE_ELEMENTS;
    for (int p = threadIdx.x; p < KV_HEADS * ROPE_PAIRS; p += blockDim.x)
    {
        int g = p / ROPE_PAIRS, i = p % ROPE_PAIRS;
        float c, s;
        rope_angle(positions[token], i, &c, &s);
        int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + ROPE_PAIRS;
        const float* src = k + (long)token * QKV_WIDTH + g * HEAD_DIM;
        kv_t* dst = kplane + ((long)g * BLOCK_TOKENS + slots[token]) * HEAD_DIM;
        dst[a] = kv_store(src[a] * c - src[b] * s);
        dst[b] = kv_store(src[a] * s + src[b] * c);
    }
    for (int p = threadIdx.x; p < KV_HEADS * HEAD_DIM; p += blockDim.x)
    {
        int g = p / HEAD_DIM, d = p % HEAD_DIM;
        vplane[((long)g * BLOCK_TOKENS + slots[token]) * HEAD_DIM + d] = kv_store(v[(long)token * QKV_WIDTH + p]);
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

// out[token] = silu(gate) * up from the fused projection's row [gate (width) | up (width)]; count = tokens · width.
extern "C" __global__ void swiglu(const float* gate_up, operand_t* out, int width, long count)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x)
    {
        long token = i / width;
        int c = (int)(i - token * width);
        float g = gate_up[2 * token * width + c];
        out[i] = operand_store(g / (1.0f + expf(-g)) * gate_up[(2 * token + 1) * width + c]);
    }
}

// x[token][i] += bias[i] for rows of n floats.
extern "C" __global__ void add_bias(float* x, const float* bias, int n)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[(long)blockIdx.x * n + i] += bias[i];
}

// result[token] = argmax of logits[token][0..n) (lowest index on ties); one block per token.
extern "C" __global__ void argmax(const float* logits, int n, int* result)
{
    __shared__ float best_value[32];
    __shared__ int best_index[32];
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

// y = x as operands of a matrix product (rounded to bf16 when those are bf16), n floats.
extern "C" __global__ void to_operand(const float* x, operand_t* y, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) y[i] = operand_store(x[i]);
}

// out[i] = x[rows[i]] for rows of n floats; one block per gathered row.
extern "C" __global__ void gather_rows(const float* x, const int* rows, float* out, int n)
{
    const float* row = x + (long)rows[blockIdx.x] * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(long)blockIdx.x * n + i] = row[i];
}

// A prefill tile's query rows rotated by (position − rotation) into shared memory (float or half): row r is head
// r % GROUP_SIZE of KV head g's group for token r / GROUP_SIZE of the tile; rows past the tile's tokens (or past
// real_rows) become zeros.
__device__ __forceinline__ void store_shared(float* at, float v) { *at = v; }
__device__ __forceinline__ void store_shared(__half* at, float v) { *at = __float2half(v); }
template <typename T>
__device__ void rotate_tile_queries(const float* q, T* query, int rows, int real_rows, int tile_tokens, int first_token, int first_position,
    int rotation, int g, int interleaved)
{
    for (int idx = threadIdx.x; idx < rows * ROPE_PAIRS; idx += blockDim.x)
    {
        int r = idx / ROPE_PAIRS, i = idx % ROPE_PAIRS, t = r / GROUP_SIZE, h = r % GROUP_SIZE;
        int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + ROPE_PAIRS;
        float va = 0, vb = 0;
        if (t < tile_tokens && r < real_rows)
        {
            float c, s;
            rope_angle(first_position + first_token + t - rotation, i, &c, &s);
            const float* src = q + (long)(first_token + t) * QKV_WIDTH + (g * GROUP_SIZE + h) * HEAD_DIM;
            va = src[a] * c - src[b] * s;
            vb = src[a] * s + src[b] * c;
        }
        store_shared(query + r * HEAD_DIM + a, va);
        store_shared(query + r * HEAD_DIM + b, vb);
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
    int tokens, int first_position, float scale, int interleaved, float* out)
{
    __shared__ float query[QROWS * HEAD_DIM];
    __shared__ float acc[QROWS * HEAD_DIM];
    __shared__ float keys[BLOCK_TOKENS * (HEAD_DIM + 1)];   // rows padded by one: the score loop reads a column across rows
    __shared__ float values[BLOCK_TOKENS * HEAD_DIM];
    __shared__ float p[QROWS * BLOCK_TOKENS];
    __shared__ float row_max[QROWS], row_sum[QROWS], row_scale[QROWS];
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
            rotate_tile_queries(q, query, QROWS, QROWS, tile_tokens, first_token, first_position, rotation, g, interleaved);
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
        if (t < tile_tokens) out[((long)(first_token + t) * HEADS + g * GROUP_SIZE + h) * HEAD_DIM + d] = acc[idx] / row_sum[r];
    }
}

#if !defined(KV_F32) && (HEAD_DIM % 16 == 0)
#include <mma.h>
// attention_prefill on the tensor cores (f16 KV; head dim a multiple of 16): the same tiles, entries and online
// softmax, with S = Q·Kᵀ and P·V as 16×16×16 f16 products accumulated in f32. A block is TC_WARPS warps of 16 query
// rows each — the GROUP_SIZE heads of TC_TOKENS consecutive tokens, all reading one KV head — and streams the
// sequence's KV blocks (16 keys) through shared memory once for all of them. The running output stays in shared
// memory in f32 (each row rescaled by its own factor, which a matrix fragment cannot express).
// grid (ceil(tokens / TC_TOKENS), KV_HEADS), block TC_WARPS · 32 threads.
#define TC_WARPS (HEAD_DIM <= 64 ? 4 : 2)
#define TC_ROWS (TC_WARPS * 16)
#define TC_TOKENS (TC_ROWS / GROUP_SIZE < 1 ? 1 : TC_ROWS / GROUP_SIZE)
extern "C" __global__ void attention_prefill_tc(const float* q, const kv_t* pool, int layer, const KvEntry* table, int entries_count,
    int tokens, int first_position, float scale, int interleaved, float* out)
{
    using namespace nvcuda;
    __shared__ __align__(32) __half query[TC_ROWS * HEAD_DIM];
    __shared__ __align__(32) __half keys[BLOCK_TOKENS * HEAD_DIM];
    __shared__ __align__(32) __half values[BLOCK_TOKENS * HEAD_DIM];
    __shared__ __align__(32) float scores[TC_WARPS][16 * 16];
    __shared__ __align__(32) __half probs[TC_WARPS][16 * 16];
    __shared__ float acc[TC_ROWS * HEAD_DIM];
    __shared__ float row_max[TC_ROWS], row_sum[TC_ROWS], row_scale[TC_ROWS];
    int tile = blockIdx.x, g = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int first_token = tile * TC_TOKENS, tile_tokens = min(TC_TOKENS, tokens - first_token);
    int last_position = first_position + first_token + tile_tokens - 1;
    for (int i = threadIdx.x; i < TC_ROWS * HEAD_DIM; i += blockDim.x) acc[i] = 0;
    for (int r = threadIdx.x; r < TC_ROWS; r += blockDim.x) { row_max[r] = NEG_INF; row_sum[r] = 0; }
    // This lane's softmax row (two lanes per row, eight keys each) and whether it is a real query row.
    int my_row = warp * 16 + lane / 2, my_token = my_row / GROUP_SIZE, half_keys = (lane & 1) * 8;
    bool my_row_valid = my_token < tile_tokens && my_row < TC_TOKENS * GROUP_SIZE;
    int my_position = first_position + first_token + my_token;
    int rotation = -2147483647;

    for (int e = 0; e < entries_count; e++)
    {
        KvEntry entry = table[e];
        if (entry.first_position > last_position) break;
        __syncthreads();
        if (entry.rotation != rotation)
        {
            rotation = entry.rotation;
            rotate_tile_queries(q, query, TC_ROWS, TC_TOKENS * GROUP_SIZE, tile_tokens, first_token, first_position, rotation, g, interleaved);
        }
        const kv_t* kplane = pool + entry.block * BLOCK_ELEMENTS + (2L * layer) * PLANE_ELEMENTS + ((long)g * BLOCK_TOKENS + entry.first_slot) * HEAD_DIM;
        const kv_t* vplane = kplane + PLANE_ELEMENTS;
        for (int i = threadIdx.x; i < BLOCK_TOKENS * HEAD_DIM; i += blockDim.x)
        {
            bool present = i / HEAD_DIM < entry.count;
            keys[i] = present ? kplane[i] : __float2half(0.0f);
            values[i] = present ? vplane[i] : __float2half(0.0f);
        }
        __syncthreads();

        // S = Q_w · Kᵀ for this warp's 16 rows and the entry's 16 keys.
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
        wmma::fill_fragment(s, 0.0f);
        for (int k = 0; k < HEAD_DIM; k += 16)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kb;
            wmma::load_matrix_sync(qa, query + warp * 16 * HEAD_DIM + k, HEAD_DIM);
            wmma::load_matrix_sync(kb, keys + k, HEAD_DIM);
            wmma::mma_sync(s, qa, kb, s);
        }
        wmma::store_matrix_sync(scores[warp], s, 16, wmma::mem_row_major);
        __syncwarp();

        // Online softmax over the row's visible keys (causal: a key after the row's position gets no weight).
        const float* row_scores = scores[warp] + (lane / 2) * 16;
        float v[8], local = NEG_INF;
        for (int c = 0; c < 8; c++)
        {
            int j = half_keys + c;
            bool visible = my_row_valid && j < entry.count && entry.first_position + j <= my_position;
            v[c] = visible ? row_scores[j] * scale : NEG_INF;
            local = fmaxf(local, v[c]);
        }
        local = fmaxf(local, __shfl_xor_sync(0xffffffff, local, 1));
        float previous = row_max[my_row];
        float m = fmaxf(previous, local);
        float old_scale = m == NEG_INF ? 1.0f : __expf(previous - m);
        float sum = 0;
        for (int c = 0; c < 8; c++)
        {
            float p = v[c] == NEG_INF ? 0.0f : __expf(v[c] - m);
            probs[warp][(lane / 2) * 16 + half_keys + c] = __float2half(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        __syncwarp();
        if ((lane & 1) == 0)
        {
            row_sum[my_row] = row_sum[my_row] * old_scale + sum;
            row_max[my_row] = m;
            row_scale[my_row] = old_scale;
        }
        __syncwarp();

        // O_w = O_w · scale + P_w · V, sixteen output columns at a time through the (now free) score tile.
        for (int n = 0; n < HEAD_DIM; n += 16)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vb;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> pv;
            wmma::fill_fragment(pv, 0.0f);
            wmma::load_matrix_sync(pa, probs[warp], 16);
            wmma::load_matrix_sync(vb, values + n, HEAD_DIM);
            wmma::mma_sync(pv, pa, vb, pv);
            wmma::store_matrix_sync(scores[warp], pv, 16, wmma::mem_row_major);
            __syncwarp();
            for (int idx = lane; idx < 256; idx += 32)
            {
                int row = warp * 16 + idx / 16, column = n + idx % 16;
                acc[row * HEAD_DIM + column] = acc[row * HEAD_DIM + column] * row_scale[row] + scores[warp][idx];
            }
            __syncwarp();
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < TC_ROWS * HEAD_DIM; idx += blockDim.x)
    {
        int r = idx / HEAD_DIM, d = idx % HEAD_DIM, t = r / GROUP_SIZE, h = r % GROUP_SIZE;
        if (t < tile_tokens && r < TC_TOKENS * GROUP_SIZE)
            out[((long)(first_token + t) * HEADS + g * GROUP_SIZE + h) * HEAD_DIM + d] = acc[idx] / row_sum[r];
    }
}
#endif
