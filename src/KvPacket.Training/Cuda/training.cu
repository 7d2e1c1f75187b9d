// Training kernels: the elementwise, normalisation, attention-softmax, loss and optimiser steps of the forward and
// backward passes that CudaTrainingModel runs around cuBLAS's matrix products. Shapes are run-time arguments (one
// module serves every model). Each kernel exists for two operand types: `_f32` (float operands, the parity path) and
// `_bf16` (bfloat16 operands with f32 accumulation). Whatever feeds a matrix product is written in the operand type;
// the residual stream, gradients, norms' statistics and optimiser state are always f32.
// Nothing here uses atomics: every reduction has a fixed order, so a step is bit-for-bit repeatable.
#include <cuda_bf16.h>

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T store(float x);
template <> __device__ __forceinline__ float store<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32); every thread gets the total.
__device__ float block_sum(float v)
{
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = 0;
    for (int w = 0; w < warps; w++) total += partial[w];
    return total;
}

__device__ float block_max(float v)
{
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = NEG_INF;
    for (int w = 0; w < warps; w++) total = fmaxf(total, partial[w]);
    return total;
}

// cos/sin of position·inv_freq[i], the angle reduced to [−π, π] in float64 first (as exact as the CPU's float64 angle).
__device__ __forceinline__ void rope_angle(int position, const double* inv_freq, int i, float* c, float* s)
{
    double angle = (double)position * inv_freq[i];
    angle -= 6.283185307179586 * rint(angle * 0.15915494309189535);
    sincosf((float)angle, s, c);
}

// Columns paired by RoPE: (2i, 2i+1) interleaved (llama2.c), (i, i + d/2) rotate-half (Hugging Face).
__device__ __forceinline__ void rope_columns(int i, int head_dim, int interleaved, int* a, int* b)
{
    *a = interleaved ? 2 * i : i;
    *b = interleaved ? 2 * i + 1 : i + head_dim / 2;
}

template <typename T>
__device__ void copy_out(const float* source, T* destination, long count)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x)
        destination[i] = store<T>(source[i]);
}

// ---- forward ----

// x[r] = embedding[source[r]] for source ≥ 0, else soft[−1 − source[r]] (a trainable soft token). One block per row.
template <typename T>
__device__ void embed(const int* source, const T* embedding, const float* soft, float* x, int width)
{
    int r = blockIdx.x, s = source[r];
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        x[(long)r * width + i] = s >= 0 ? load(embedding[(long)s * width + i]) : soft[(long)(-1 - s) * width + i];
}

// y = x / rms(x) · w per row, and rstd = 1/rms(x) kept for the backward pass. One block per row.
template <typename T>
__device__ void rms_norm(const float* x, const float* w, T* y, float* rstd, int width, float epsilon)
{
    const float* row = x + (long)blockIdx.x * width;
    float sum = 0;
    for (int i = threadIdx.x; i < width; i += blockDim.x) sum += row[i] * row[i];
    float inverse = rsqrtf(block_sum(sum) / width + epsilon);
    for (int i = threadIdx.x; i < width; i += blockDim.x) y[(long)blockIdx.x * width + i] = store<T>(row[i] * inverse * w[i]);
    if (threadIdx.x == 0) rstd[blockIdx.x] = inverse;
}

// cos and sin of each RoPE pair's angle at `position`, into shared memory for the block (one token per block).
__device__ void token_angles(int position, const double* inv_freq, int pairs, float* cosines, float* sines)
{
    for (int i = threadIdx.x; i < pairs; i += blockDim.x) rope_angle(position, inv_freq, i, &cosines[i], &sines[i]);
    __syncthreads();
}

// Adds the biases, rotates q and k by the row's position and writes them head-major for the attention:
// q [tokens, H·d] → qh [B, H, n, d]; k and v [tokens, KV·d] → kh, vh [B, H, n, d], each KV head repeated for its group
// of query heads. One block per token; reads and writes run along the head dimension.
template <typename T>
__device__ void rope_split(const float* q, const float* k, const float* v, const float* q_bias, const float* k_bias, const float* v_bias,
                           const int* positions, const double* inv_freq, T* qh, T* kh, T* vh,
                           int n, int heads, int kv_heads, int head_dim, int interleaved)
{
    __shared__ float cosines[256], sines[256];
    int token = blockIdx.x, b = token / n, t = token % n, half = head_dim / 2, group = heads / kv_heads;
    token_angles(positions[token], inv_freq, half, cosines, sines);
    const float* qr = q + (long)token * heads * head_dim;
    const float* kr = k + (long)token * kv_heads * head_dim;
    const float* vr = v + (long)token * kv_heads * head_dim;
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x)
    {
        int h = idx / half, i = idx % half, a, c2;
        rope_columns(i, head_dim, interleaved, &a, &c2);
        float x = qr[h * head_dim + a] + (q_bias ? q_bias[h * head_dim + a] : 0.f), y = qr[h * head_dim + c2] + (q_bias ? q_bias[h * head_dim + c2] : 0.f);
        T* out = qh + (((long)b * heads + h) * n + t) * head_dim;
        out[a] = store<T>(x * cosines[i] - y * sines[i]);
        out[c2] = store<T>(x * sines[i] + y * cosines[i]);
    }
    for (int idx = threadIdx.x; idx < kv_heads * half; idx += blockDim.x)
    {
        int g = idx / half, i = idx % half, a, c2;
        rope_columns(i, head_dim, interleaved, &a, &c2);
        float x = kr[g * head_dim + a] + (k_bias ? k_bias[g * head_dim + a] : 0.f), y = kr[g * head_dim + c2] + (k_bias ? k_bias[g * head_dim + c2] : 0.f);
        T ra = store<T>(x * cosines[i] - y * sines[i]), rb = store<T>(x * sines[i] + y * cosines[i]);
        for (int h = g * group; h < (g + 1) * group; h++)
        {
            T* out = kh + (((long)b * heads + h) * n + t) * head_dim;
            out[a] = ra;
            out[c2] = rb;
        }
    }
    for (int idx = threadIdx.x; idx < kv_heads * head_dim; idx += blockDim.x)
    {
        int g = idx / head_dim, d = idx % head_dim;
        T value = store<T>(vr[idx] + (v_bias ? v_bias[idx] : 0.f));
        for (int h = g * group; h < (g + 1) * group; h++) vh[(((long)b * heads + h) * n + t) * head_dim + d] = value;
    }
}

// p = softmax over the keys row i may see, [first_visible[i], i], of the scaled scores s (already scaled by the
// product). Rows are (b, h, i) of [B, H, n, n]. One block per row.
template <typename T>
__device__ void masked_softmax(const float* s, T* p, const int* first_visible, int n, int heads)
{
    long row = blockIdx.x;
    int i = (int)(row % n), b = (int)(row / n / heads);
    int first = first_visible[b * n + i];
    const float* sr = s + row * n;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) if (j >= first && j <= i) m = fmaxf(m, sr[j]);
    m = block_max(m);
    float sum = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) if (j >= first && j <= i) sum += __expf(sr[j] - m);
    float inverse = 1.f / block_sum(sum);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        p[row * n + j] = store<T>(j >= first && j <= i ? __expf(sr[j] - m) * inverse : 0.f);
}

// [B, H, n, d] → [tokens, H·d] in the operand type (the output product's input). One block per token.
template <typename T>
__device__ void merge_heads(const float* oh, T* o, int n, int heads, int head_dim)
{
    int token = blockIdx.x, b = token / n, t = token % n;
    for (int idx = threadIdx.x; idx < heads * head_dim; idx += blockDim.x)
    {
        int h = idx / head_dim, d = idx % head_dim;
        o[(long)token * heads * head_dim + idx] = store<T>(oh[(((long)b * heads + h) * n + t) * head_dim + d]);
    }
}

// hidden = silu(gate)·up.
template <typename T>
__device__ void swiglu(const float* gate, const float* up, T* hidden, long count)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x)
    {
        float g = gate[i];
        hidden[i] = store<T>(g / (1.f + __expf(-g)) * up[i]);
    }
}

// ---- loss ----

// Per row r with weight w[r] > 0: cross-entropy against targets[r] (teacher_row[r] < 0), or KL(teacher ‖ softmax(logits))
// against the teacher's probabilities teacher[teacher_row[r]] (teacher_row[r] ≥ 0). Writes row_loss[r] = w·loss and
// dlogits = w·scale·(softmax − target distribution) in the operand type; rows of weight 0 get zero gradients.
template <typename T>
__device__ void loss_rows(const float* logits, const int* targets, const int* teacher_row, const float* teacher, const float* weights,
                          float scale, T* dlogits, float* row_loss, int vocab)
{
    long r = blockIdx.x;
    const float* lr = logits + r * vocab;
    T* dr = dlogits + r * vocab;
    float w = weights[r];
    if (w == 0.f)
    {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) dr[j] = store<T>(0.f);
        if (threadIdx.x == 0) row_loss[r] = 0;
        return;
    }
    float m = NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, lr[j]);
    m = block_max(m);
    float sum = 0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += __expf(lr[j] - m);
    float log_z = m + __logf(block_sum(sum));
    int tr = teacher_row[r];
    const float* pt = tr >= 0 ? teacher + (long)tr * vocab : nullptr;
    int target = targets[r];
    float loss = 0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
    {
        float log_q = lr[j] - log_z, q = __expf(log_q);
        float p = pt ? pt[j] : (j == target ? 1.f : 0.f);
        if (p > 0.f) loss += pt ? p * (__logf(p) - log_q) : -log_q;
        dr[j] = store<T>(w * scale * (q - p));
    }
    loss = block_sum(loss);
    if (threadIdx.x == 0) row_loss[r] = w * loss;
}

// total[0] = Σ values (one block; fixed order).
__device__ void sum_all(const float* values, long count, float* total)
{
    float s = 0;
    for (long i = threadIdx.x; i < count; i += blockDim.x) s += values[i];
    s = block_sum(s);
    if (threadIdx.x == 0) total[0] = s;
}

// ---- backward ----

// dx += rstd·(w⊙dy) − x·rstd³/n·Σ(w⊙dy⊙x) per row (one block per row); dw_partial[chunk] = Σ over this block's row of
// dy⊙x·rstd, summed later by column_sum in row order.
__device__ void rms_norm_backward(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw_rows, int width)
{
    long r = blockIdx.x;
    const float* xr = x + r * width;
    const float* gr = dy + r * width;
    float inverse = rstd[r], dot = 0;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dot += w[i] * gr[i] * xr[i];
    dot = block_sum(dot);
    float correction = inverse * inverse * inverse / width * dot;
    for (int i = threadIdx.x; i < width; i += blockDim.x)
    {
        dx[r * width + i] += inverse * w[i] * gr[i] - xr[i] * correction;
        if (dw_rows) dw_rows[r * width + i] = gr[i] * xr[i] * inverse;
    }
}

// Column sums of in [rows, columns] (bias and norm-weight gradients) in two passes of fixed order: chunk y of the grid
// sums its slice of rows into out[y, c] (or adds into out[c] with one chunk and accumulate). One thread per column.
__device__ void column_sum(const float* in, long rows, int columns, float* out, int accumulate)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= columns) return;
    long per = (rows + gridDim.y - 1) / gridDim.y, first = blockIdx.y * per, last = min(rows, first + per);
    float s = 0;
    for (long r = first; r < last; r++) s += in[r * columns + c];
    if (accumulate) out[c] += s;
    else out[(long)blockIdx.y * columns + c] = s;
}

// [tokens, H·d] f32 → [B, H, n, d] operand type (the attention output's gradient, for the batched products). One block per token.
template <typename T>
__device__ void split_heads(const float* o, T* oh, int n, int heads, int head_dim)
{
    int token = blockIdx.x, b = token / n, t = token % n;
    for (int idx = threadIdx.x; idx < heads * head_dim; idx += blockDim.x)
    {
        int h = idx / head_dim, d = idx % head_dim;
        oh[(((long)b * heads + h) * n + t) * head_dim + d] = store<T>(o[(long)token * heads * head_dim + idx]);
    }
}

// ds = scale·p⊙(dp − Σ_j p⊙dp) per row of [B, H, n, n]; one block per row.
template <typename T>
__device__ void softmax_backward(const T* p, const float* dp, T* ds, int n, float scale)
{
    long row = blockIdx.x;
    float dot = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) dot += load(p[row * n + j]) * dp[row * n + j];
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
    {
        float pj = load(p[row * n + j]);
        ds[row * n + j] = store<T>(pj == 0.f ? 0.f : scale * pj * (dp[row * n + j] - dot));
    }
}

// The inverse of rope_split for gradients: dqh, dkh, dvh [B, H, n, d] (f32) → dq [tokens, H·d] rotated back by the
// row's position, and dk, dv [tokens, KV·d] summed over each KV head's group of query heads (k also rotated back).
// Written in f32 (bias gradients) and the operand type (the products). One block per token.
template <typename T>
__device__ void rope_merge_backward(const float* dqh, const float* dkh, const float* dvh, const int* positions, const double* inv_freq,
                                    float* dq, float* dk, float* dv, T* dq_op, T* dk_op, T* dv_op,
                                    int n, int heads, int kv_heads, int head_dim, int interleaved)
{
    __shared__ float cosines[256], sines[256];
    int token = blockIdx.x, b = token / n, t = token % n, half = head_dim / 2, group = heads / kv_heads;
    token_angles(positions[token], inv_freq, half, cosines, sines);
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x)
    {
        int h = idx / half, i = idx % half, a, c2;
        rope_columns(i, head_dim, interleaved, &a, &c2);
        const float* g = dqh + (((long)b * heads + h) * n + t) * head_dim;
        float ra = g[a] * cosines[i] + g[c2] * sines[i], rc = -g[a] * sines[i] + g[c2] * cosines[i];   // rotation by −position
        long at = (long)token * heads * head_dim + h * head_dim;
        dq[at + a] = ra; dq[at + c2] = rc;
        dq_op[at + a] = store<T>(ra); dq_op[at + c2] = store<T>(rc);
    }
    for (int idx = threadIdx.x; idx < kv_heads * half; idx += blockDim.x)
    {
        int g = idx / half, i = idx % half, a, c2;
        rope_columns(i, head_dim, interleaved, &a, &c2);
        float ka = 0.f, kc = 0.f;
        for (int h = g * group; h < (g + 1) * group; h++)
        {
            const float* row = dkh + (((long)b * heads + h) * n + t) * head_dim;
            ka += row[a];
            kc += row[c2];
        }
        float ra = ka * cosines[i] + kc * sines[i], rc = -ka * sines[i] + kc * cosines[i];
        long at = (long)token * kv_heads * head_dim + g * head_dim;
        dk[at + a] = ra; dk[at + c2] = rc;
        dk_op[at + a] = store<T>(ra); dk_op[at + c2] = store<T>(rc);
    }
    for (int idx = threadIdx.x; idx < kv_heads * head_dim; idx += blockDim.x)
    {
        int g = idx / head_dim, d = idx % head_dim;
        float sum = 0.f;
        for (int h = g * group; h < (g + 1) * group; h++) sum += dvh[(((long)b * heads + h) * n + t) * head_dim + d];
        long at = (long)token * kv_heads * head_dim + idx;
        dv[at] = sum;
        dv_op[at] = store<T>(sum);
    }
}

// dgate = dh·up·silu′(gate), dup = dh·silu(gate), in the operand type; silu′(g) = σ(g)(1 + g(1 − σ(g))).
template <typename T>
__device__ void swiglu_backward(const float* gate, const float* up, const float* dh, T* dgate, T* dup, long count)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x)
    {
        float g = gate[i], sigmoid = 1.f / (1.f + __expf(-g));
        dup[i] = store<T>(dh[i] * g * sigmoid);
        dgate[i] = store<T>(dh[i] * up[i] * sigmoid * (1.f + g * (1.f - sigmoid)));
    }
}

// Embedding gradients without atomics: the host groups the rows by destination (rows[starts[u] .. starts[u+1]) all
// came from destination[u]: a token id ≥ 0, or soft row −1 − id) and each block sums its group in row order.
__device__ void embed_backward(const float* dx, const int* rows, const int* starts, const int* destination, float* d_embedding, float* d_soft, int width)
{
    int u = blockIdx.x, id = destination[u];
    float* target = id >= 0 ? (d_embedding ? d_embedding + (long)id * width : nullptr) : (d_soft ? d_soft + (long)(-1 - id) * width : nullptr);
    if (!target) return;
    for (int i = threadIdx.x; i < width; i += blockDim.x)
    {
        float s = 0;
        for (int k = starts[u]; k < starts[u + 1]; k++) s += dx[(long)rows[k] * width + i];
        target[i] += s;
    }
}

// ---- optimiser ----

// partial[block] = Σ g² over a grid-stride slice (fixed grid, so a fixed order); finish with sum_all.
__device__ void sum_squares(const float* g, long count, float* partial)
{
    float s = 0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x) s += g[i] * g[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One AdamW step over [0, count): the gradient scaled by grad_scale·min(1, max_norm / ‖g‖) (‖g‖² read from
// squared_norm on the device, so no host round trip), bias-corrected moments, decoupled weight decay.
__device__ void adamw(float* p, const float* g, float* m, float* v, long count, float rate, float beta1, float beta2, float epsilon,
                      float decay, float correction1, float correction2, const float* squared_norm, float max_norm, float grad_scale)
{
    float norm = sqrtf(squared_norm[0]) * grad_scale;
    float clip = max_norm > 0.f && norm > max_norm ? max_norm / norm : 1.f;
    float factor = grad_scale * clip;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x)
    {
        float gi = g[i] * factor;
        float mi = beta1 * m[i] + (1.f - beta1) * gi;
        float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float update = mi / correction1 / (sqrtf(vi / correction2) + epsilon);
        p[i] -= rate * (update + decay * p[i]);
    }
}

// ---- entry points, one per operand type ----
#define FOR_TYPE(S, T)                                                                                                         \
extern "C" __global__ void copy_out_##S(const float* source, T* destination, long count) { copy_out<T>(source, destination, count); } \
extern "C" __global__ void embed_##S(const int* source, const T* embedding, const float* soft, float* x, int width)               \
    { embed<T>(source, embedding, soft, x, width); }                                                                           \
extern "C" __global__ void rms_norm_##S(const float* x, const float* w, T* y, float* rstd, int width, float epsilon)             \
    { rms_norm<T>(x, w, y, rstd, width, epsilon); }                                                                            \
extern "C" __global__ void rope_split_##S(const float* q, const float* k, const float* v, const float* qb, const float* kb,        \
    const float* vb, const int* positions, const double* inv_freq, T* qh, T* kh, T* vh, int n, int heads, int kv_heads,        \
    int head_dim, int interleaved)                                                                                             \
    { rope_split<T>(q, k, v, qb, kb, vb, positions, inv_freq, qh, kh, vh, n, heads, kv_heads, head_dim, interleaved); }       \
extern "C" __global__ void masked_softmax_##S(const float* s, T* p, const int* first_visible, int n, int heads)                 \
    { masked_softmax<T>(s, p, first_visible, n, heads); }                                                                      \
extern "C" __global__ void merge_heads_##S(const float* oh, T* o, int n, int heads, int head_dim)                              \
    { merge_heads<T>(oh, o, n, heads, head_dim); }                                                                             \
extern "C" __global__ void swiglu_##S(const float* gate, const float* up, T* hidden, long count)                               \
    { swiglu<T>(gate, up, hidden, count); }                                                                                    \
extern "C" __global__ void loss_rows_##S(const float* logits, const int* targets, const int* teacher_row, const float* teacher,   \
    const float* weights, float scale, T* dlogits, float* row_loss, int vocab)                                                 \
    { loss_rows<T>(logits, targets, teacher_row, teacher, weights, scale, dlogits, row_loss, vocab); }                         \
extern "C" __global__ void split_heads_##S(const float* o, T* oh, int n, int heads, int head_dim)                              \
    { split_heads<T>(o, oh, n, heads, head_dim); }                                                                             \
extern "C" __global__ void softmax_backward_##S(const T* p, const float* dp, T* ds, int n, float scale)                         \
    { softmax_backward<T>(p, dp, ds, n, scale); }                                                                              \
extern "C" __global__ void rope_merge_backward_##S(const float* dqh, const float* dkh, const float* dvh, const int* positions,   \
    const double* inv_freq, float* dq, float* dk, float* dv, T* dq_op, T* dk_op, T* dv_op, int n, int heads, int kv_heads,     \
    int head_dim, int interleaved)                                                                                             \
    { rope_merge_backward<T>(dqh, dkh, dvh, positions, inv_freq, dq, dk, dv, dq_op, dk_op, dv_op, n, heads, kv_heads, head_dim, interleaved); } \
extern "C" __global__ void swiglu_backward_##S(const float* gate, const float* up, const float* dh, T* dgate, T* dup, long count) \
    { swiglu_backward<T>(gate, up, dh, dgate, dup, count); }

FOR_TYPE(f32, float)
FOR_TYPE(bf16, __nv_bfloat16)

extern "C" __global__ void sum_all_f32(const float* values, long count, float* total) { sum_all(values, count, total); }
extern "C" __global__ void rms_norm_backward_f32(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw_rows, int width)
    { rms_norm_backward(x, w, rstd, dy, dx, dw_rows, width); }
extern "C" __global__ void column_sum_f32(const float* in, long rows, int columns, float* out, int accumulate) { column_sum(in, rows, columns, out, accumulate); }
extern "C" __global__ void embed_backward_f32(const float* dx, const int* rows, const int* starts, const int* destination, float* d_embedding, float* d_soft, int width)
    { embed_backward(dx, rows, starts, destination, d_embedding, d_soft, width); }
extern "C" __global__ void sum_squares_f32(const float* g, long count, float* partial) { sum_squares(g, count, partial); }
extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long count, float rate, float beta1, float beta2, float epsilon,
    float decay, float correction1, float correction2, const float* squared_norm, float max_norm, float grad_scale)
    { adamw(p, g, m, v, count, rate, beta1, beta2, epsilon, decay, correction1, correction2, squared_norm, max_norm, grad_scale); }
