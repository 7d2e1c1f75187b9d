// TokenDraw's rule (src/KvPacket.Compute/Sampling/TokenDraw.cs) on the device: one block per row of logits chooses that
// row's token — the argmax, or a draw at a temperature after top-k and top-p — so only ids cross the bus. Every pass
// reads the row (just written, so from L2); weights are exact integers, so the result does not depend on the order the
// threads add in. Needs no model constants: compiled as a module of its own.

#define DRAW_THREADS 512
#define DRAW_WARPS (DRAW_THREADS / 32)
#define WEIGHT_SCALE 1099511627776.0f   // 2^40: the most likely token weighs exactly this
typedef unsigned long long u64;

// One row's rule, as TokenDraw lays it out (24 bytes).
struct TokenDraw
{
    float temperature;   // > 0
    int top_k;           // 0: every token
    float top_p;         // >= 1: every token
    u64 bits;            // the draw's random bits
};

__device__ __forceinline__ unsigned key_of(float x)
{
    unsigned bits = __float_as_uint(x);
    return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float value_of(unsigned key)
{
    return __uint_as_float((key & 0x80000000u) ? key & 0x7fffffffu : ~key);
}

// exp((x − max) / T) by the inverse temperature (a division costs a subroutine per element), times 2^40.
__device__ __forceinline__ u64 weight_of(float x, float max, float inverse_t)
{
    return (u64)(expf((x - max) * inverse_t) * WEIGHT_SCALE);
}

#define FULL_MASK 0xffffffffu
#define IN_FLIGHT 16   // loads a thread issues before using any: one block per row is latency-bound otherwise

// Calls visit(i, row[i]) for i = first, first + stride, … below end, the loads of IN_FLIGHT elements issued together.
template <typename Visit>
__device__ __forceinline__ void for_each(const float* row, int first, int end, int stride, Visit visit)
{
    for (int base = first; base < end; base += IN_FLIGHT * stride)
    {
        float x[IN_FLIGHT];
        #pragma unroll
        for (int j = 0; j < IN_FLIGHT; j++)
        {
            int i = base + j * stride;
            x[j] = i < end ? row[i] : 0.0f;
        }
        #pragma unroll
        for (int j = 0; j < IN_FLIGHT; j++)
        {
            int i = base + j * stride;
            if (i < end) visit(i, x[j]);
        }
    }
}

// Block-wide reductions and scans over DRAW_THREADS threads; `scratch` holds DRAW_WARPS values. Every thread gets the result.
__device__ float block_max(float v, float* scratch)
{
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < DRAW_WARPS; w++) v = fmaxf(v, scratch[w]);
    __syncthreads();
    return v;
}

__device__ u64 block_sum(u64 v, u64* scratch)
{
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(FULL_MASK, v, o);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = 0;
    for (int w = 0; w < DRAW_WARPS; w++) v += scratch[w];
    __syncthreads();
    return v;
}

// Exclusive prefix sum of v over the block's threads in order.
__device__ u64 block_exclusive_scan(u64 v, u64* scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    u64 inclusive = v;
    for (int o = 1; o < 32; o *= 2)
    {
        u64 other = __shfl_up_sync(FULL_MASK, inclusive, o);
        if (lane >= o) inclusive += other;
    }
    if (lane == 31) scratch[warp] = inclusive;
    __syncthreads();
    u64 before = 0;
    for (int w = 0; w < warp; w++) before += scratch[w];
    __syncthreads();
    return before + inclusive - v;
}

// The first index i of [0, n) at which the running sum of value(j, row[j]) for j = 0..i in id order passes target (< the sum of all):
// the block narrows the range sixteenfold a round (a warp per part, its lanes reading consecutive ids), then scans
// the last DRAW_THREADS ids one per thread. Every thread returns the same.
template <typename Value>
__device__ int find_crossing(const float* row, int n, u64 target, Value value, u64* scratch, int* found)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    int lo = 0, hi = n;
    while (hi - lo > DRAW_THREADS)
    {
        int part = (hi - lo + DRAW_WARPS - 1) / DRAW_WARPS;
        int begin = lo + warp * part, end = min(hi, begin + part);
        u64 sum = 0;
        for_each(row, begin + lane, end, 32, [&](int i, float x) { sum += value(i, x); });
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(FULL_MASK, sum, o);
        if (lane == 0) scratch[warp] = sum;
        __syncthreads();
        int chosen = DRAW_WARPS - 1;
        u64 before = 0;
        for (int w = 0; w < DRAW_WARPS; w++)
        {
            if (before + scratch[w] > target) { chosen = w; break; }
            before += scratch[w];
        }
        __syncthreads();
        target -= before;
        lo += chosen * part;
        hi = min(hi, lo + part);
    }
    int i = lo + threadIdx.x;
    u64 v = i < hi ? value(i, row[i]) : 0;
    u64 start = block_exclusive_scan(v, scratch);
    if (i < hi && start <= target && target < start + v) *found = i;
    __syncthreads();
    return *found;
}

// Radix select over the keys >= floor, from the top, in digits of 11, 11 and 10 bits (an 8-bit first digit is nearly
// the same for every logit, and the histogram's atomics then all land on a few bins): the key at which the descending
// running count (by_weight 0) or weight (1) first reaches target. *remaining gets what is still to take at that key
// (>= 1), or -1 when everything at or above the floor totals less than the target. Every thread returns the same. The
// histograms take 32-bit shared atomics only (64-bit ones contend badly): a weight's low word with its carries
// counted, and its high word.
#define RADIX_BINS 2048
__device__ unsigned radix_select(const float* row, int n, float max, float inverse_t, int by_weight, unsigned floor, u64 target,
    long long* remaining, unsigned* low, unsigned* high, unsigned* carry, u64* histogram, u64* shared)
{
    unsigned prefix = 0, mask = 0;
    for (int level = 0; level < 3; level++)
    {
        int shift = level == 0 ? 21 : level == 1 ? 10 : 0, bins = level == 2 ? 1024 : 2048;
        for (int b = threadIdx.x; b < bins; b += DRAW_THREADS) low[b] = high[b] = carry[b] = 0;
        __syncthreads();
        for_each(row, threadIdx.x, n, DRAW_THREADS, [&](int, float x)
        {
            unsigned key = key_of(x);
            if ((key & mask) != prefix || key < floor) return;
            int digit = (key >> shift) & (bins - 1);
            if (!by_weight) { atomicAdd(&low[digit], 1u); return; }
            u64 w = weight_of(x, max, inverse_t);
            unsigned part = (unsigned)w, old = atomicAdd(&low[digit], part);
            if (old + part < old) atomicAdd(&carry[digit], 1u);
            if (w >> 32) atomicAdd(&high[digit], (unsigned)(w >> 32));
        });
        __syncthreads();
        for (int b = threadIdx.x; b < bins; b += DRAW_THREADS) histogram[b] = ((u64)(high[b] + carry[b]) << 32) + low[b];
        __syncthreads();
        // Warp 0 finds the digit: lane l holds the l-th run of bins/32 digits counted from the top.
        if (threadIdx.x < 32)
        {
            int lane = threadIdx.x, run = bins / 32, top = bins - 1 - run * lane;
            u64 sum = 0;
            for (int j = 0; j < run; j++) sum += histogram[top - j];
            u64 inclusive = sum;
            for (int o = 1; o < 32; o *= 2)
            {
                u64 other = __shfl_up_sync(FULL_MASK, inclusive, o);
                if (lane >= o) inclusive += other;
            }
            u64 above = inclusive - sum;
            unsigned crossing = __ballot_sync(FULL_MASK, above < target && inclusive >= target);
            if (crossing == 0)
            {
                if (lane == 0) shared[0] = 0xffffffffffffffffull;
            }
            else if (lane == __ffs(crossing) - 1)
            {
                int digit = top;
                while (above + histogram[digit] < target) above += histogram[digit--];
                shared[0] = (u64)digit;
                shared[1] = target - above;
            }
        }
        __syncthreads();
        u64 digit = shared[0], left = shared[1];
        __syncthreads();
        if (digit == 0xffffffffffffffffull) { *remaining = -1; return floor; }
        target = left;
        prefix |= (unsigned)digit << shift;
        mask |= (unsigned)(bins - 1) << shift;
    }
    *remaining = (long long)target;
    return prefix;
}

// Up to DRAW_ROWS rows' rules, passed by value with the launch: nothing to upload, no wait before the step's end.
#define DRAW_ROWS 64
struct DrawBatch { TokenDraw rows[DRAW_ROWS]; };

// result[r] = the token batch.rows[r] chooses from logits[r][0..n); one block of DRAW_THREADS per row. The temperature is
// > 0 (the argmax is top_k 1: the largest logit, lowest id on ties, at any temperature).
extern "C" __global__ void __launch_bounds__(DRAW_THREADS) token_draw(const float* __restrict__ logits, int n, DrawBatch batch, int* result)
{
    __shared__ float scratch_f[DRAW_WARPS];
    __shared__ u64 scratch[DRAW_WARPS];
    __shared__ unsigned low[RADIX_BINS], high[RADIX_BINS], carry[RADIX_BINS];
    __shared__ u64 histogram[RADIX_BINS];
    __shared__ u64 shared[2];
    __shared__ int found;
    const float* row = logits + (long)blockIdx.x * n;
    TokenDraw draw = batch.rows[blockIdx.x];

    float local = __int_as_float(0xff800000);
    for_each(row, threadIdx.x, n, DRAW_THREADS, [&](int, float x) { local = fmaxf(local, x); });
    float max = block_max(local, scratch_f);
    float t = 1.0f / draw.temperature;   // the inverse temperature, as TokenDraw rounds it

    // (threshold, ties): every key above the threshold, and the first `ties` (by id) equal to it.
    unsigned threshold = 0;
    long long ties = n;
    if (draw.top_k > 0 && draw.top_k < n)
        threshold = radix_select(row, n, max, t, 0, 0, (u64)draw.top_k, &ties, low, high, carry, histogram, shared);
    if (draw.top_p < 1.0f)
    {
        u64 part = 0;
        for_each(row, threadIdx.x, n, DRAW_THREADS, [&](int, float x) { part += weight_of(x, max, t); });
        u64 total = block_sum(part, scratch);
        u64 target = (u64)((double)draw.top_p * (double)total);
        if (target == 0) target = 1;
        long long remaining;
        unsigned cut = radix_select(row, n, max, t, 1, threshold, target, &remaining, low, high, carry, histogram, shared);
        if (remaining >= 0)
        {
            u64 tie = weight_of(value_of(cut), max, t);
            long long need = (long long)(((u64)remaining + tie - 1) / tie);
            if (cut != threshold || need <= ties) { threshold = cut; ties = need; }
        }
    }

    // What is kept weighs W = (weight above the threshold) + (ties kept) · (a tie's weight).
    u64 above = 0, equal = 0;
    for_each(row, threadIdx.x, n, DRAW_THREADS, [&](int, float x)
    {
        unsigned key = key_of(x);
        if (key > threshold) above += weight_of(x, max, t);
        else if (key == threshold) equal++;
    });
    above = block_sum(above, scratch);
    equal = block_sum(equal, scratch);
    // The kept ties are those below `cutoff` by id: the one after the ties-th tie, or all of them.
    int cutoff = n;
    if ((long long)equal > ties)
        cutoff = 1 + find_crossing(row, n, (u64)(ties - 1), [&](int, float x) { return key_of(x) == threshold ? 1ull : 0ull; }, scratch, &found);
    u64 kept = above + (u64)min((long long)equal, ties) * weight_of(value_of(threshold), max, t);
    u64 ticket = __umul64hi(draw.bits, kept);
    int token = find_crossing(row, n, ticket, [&](int i, float x)
    {
        unsigned key = key_of(x);
        return key > threshold || (key == threshold && i < cutoff) ? weight_of(x, max, t) : 0ull;
    }, scratch, &found);
    if (threadIdx.x == 0) result[blockIdx.x] = token;
}
