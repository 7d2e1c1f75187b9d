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

__device__ __forceinline__ u64 weight_of(float x, float max, float temperature)
{
    return (u64)(expf((x - max) / temperature) * WEIGHT_SCALE);
}

// Block-wide reductions and scans over DRAW_THREADS threads; `scratch` holds DRAW_WARPS values.
__device__ float block_max(float v, float* scratch)
{
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < DRAW_WARPS; w++) v = fmaxf(v, scratch[w]);
    __syncthreads();
    return v;
}

// Exclusive prefix sum of v over the block's threads in order; *total receives the sum of all.
__device__ u64 block_exclusive_scan(u64 v, u64* scratch, u64* total)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    u64 inclusive = v;
    for (int o = 1; o < 32; o *= 2)
    {
        u64 other = __shfl_up_sync(0xffffffff, inclusive, o);
        if (lane >= o) inclusive += other;
    }
    if (lane == 31) scratch[warp] = inclusive;
    __syncthreads();
    u64 before = 0, all = 0;
    for (int w = 0; w < DRAW_WARPS; w++)
    {
        if (w < warp) before += scratch[w];
        all += scratch[w];
    }
    __syncthreads();
    *total = all;
    return before + inclusive - v;
}

// Radix select over the keys >= floor, from the top: the key at which the descending running count (by_weight 0) or
// weight (1) first reaches target. *remaining gets what is still to take at that key (>= 1), or -1 when everything at
// or above the floor totals less than the target. Every thread returns the same.
__device__ unsigned radix_select(const float* row, int n, float max, float temperature, int by_weight, unsigned floor, u64 target,
    long long* remaining, u64* histogram, u64* shared)
{
    unsigned prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        for (int b = threadIdx.x; b < 256; b += DRAW_THREADS) histogram[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += DRAW_THREADS)
        {
            float x = row[i];
            unsigned key = key_of(x);
            if ((key & mask) == prefix && key >= floor)
                atomicAdd(&histogram[(key >> shift) & 255], by_weight ? weight_of(x, max, temperature) : 1ull);
        }
        __syncthreads();
        // Warp 0 finds the digit: lane l holds digits 255 − 8l … 248 − 8l, scanned from the top.
        if (threadIdx.x < 32)
        {
            int lane = threadIdx.x;
            u64 sum = 0;
            for (int j = 0; j < 8; j++) sum += histogram[255 - 8 * lane - j];
            u64 inclusive = sum;
            for (int o = 1; o < 32; o *= 2)
            {
                u64 other = __shfl_up_sync(0xffffffff, inclusive, o);
                if (lane >= o) inclusive += other;
            }
            u64 above = inclusive - sum;
            unsigned crossing = __ballot_sync(0xffffffff, above < target && inclusive >= target);
            if (crossing == 0)
            {
                if (lane == 0) { shared[0] = 0xffffffffffffffffull; }
            }
            else if (lane == __ffs(crossing) - 1)
            {
                int digit = 255 - 8 * lane;
                while (above + histogram[digit] < target) above += histogram[digit--];
                shared[0] = (u64)digit;
                shared[1] = target - above;
            }
        }
        __syncthreads();
        u64 digit = shared[0];
        u64 left = shared[1];
        __syncthreads();
        if (digit == 0xffffffffffffffffull) { *remaining = -1; return floor; }
        target = left;
        prefix |= (unsigned)digit << shift;
        mask |= 255u << shift;
    }
    *remaining = (long long)target;
    return prefix;
}

// Up to DRAW_ROWS rows' rules, passed by value with the launch: nothing to upload, no wait before the step's end.
#define DRAW_ROWS 64
struct DrawBatch { TokenDraw rows[DRAW_ROWS]; };

// result[r] = the token batch.rows[r] chooses from logits[r][0..n); one block of DRAW_THREADS per row. The temperature is
// > 0 (the argmax is top_k 1: the largest logit, lowest id on ties, at any temperature).
extern "C" __global__ void __launch_bounds__(DRAW_THREADS) token_draw(const float* logits, int n, DrawBatch batch, int* result)
{
    __shared__ float scratch_f[DRAW_WARPS];
    __shared__ u64 scratch[DRAW_WARPS];
    __shared__ u64 histogram[256];
    __shared__ u64 shared[2];
    const float* row = logits + (long)blockIdx.x * n;
    TokenDraw draw = batch.rows[blockIdx.x];

    float local = __int_as_float(0xff800000);
    for (int i = threadIdx.x; i < n; i += DRAW_THREADS) local = fmaxf(local, row[i]);
    float max = block_max(local, scratch_f);
    float t = draw.temperature;

    // (threshold, ties): every key above the threshold, and the first `ties` (by id) equal to it.
    unsigned threshold = 0;
    long long ties = n;
    if (draw.top_k > 0 && draw.top_k < n)
        threshold = radix_select(row, n, max, t, 0, 0, (u64)draw.top_k, &ties, histogram, shared);
    if (draw.top_p < 1.0f)
    {
        u64 part = 0, total;
        for (int i = threadIdx.x; i < n; i += DRAW_THREADS) part += weight_of(row[i], max, t);
        block_exclusive_scan(part, scratch, &total);
        u64 target = (u64)((double)draw.top_p * (double)total);
        if (target == 0) target = 1;
        long long remaining;
        unsigned cut = radix_select(row, n, max, t, 1, threshold, target, &remaining, histogram, shared);
        if (remaining >= 0)
        {
            u64 tie = weight_of(value_of(cut), max, t);
            long long need = (long long)(((u64)remaining + tie - 1) / tie);
            if (cut != threshold || need <= ties) { threshold = cut; ties = need; }
        }
    }

    // The draw, in id order: each thread takes a contiguous stretch, the stretches' kept weight and ties are scanned,
    // and the one thread whose stretch holds the ticket walks it.
    int stretch = (n + DRAW_THREADS - 1) / DRAW_THREADS;
    int begin = min(n, threadIdx.x * stretch), end = min(n, begin + stretch);
    u64 above = 0, equal = 0;
    for (int i = begin; i < end; i++)
    {
        float x = row[i];
        unsigned key = key_of(x);
        if (key > threshold) above += weight_of(x, max, t);
        else if (key == threshold) equal++;
    }
    u64 all_ties;
    u64 ties_before = block_exclusive_scan(equal, scratch, &all_ties);
    long long mine = (long long)ties - (long long)ties_before;
    u64 kept_ties = mine <= 0 ? 0 : min((u64)mine, equal);
    u64 tie = weight_of(value_of(threshold), max, t);
    u64 kept;
    u64 start = block_exclusive_scan(above + kept_ties * tie, scratch, &kept);
    u64 ticket = __umul64hi(draw.bits, kept);
    if (ticket >= start && ticket < start + above + kept_ties * tie)
    {
        u64 cumulative = start;
        long long seen = (long long)ties_before;
        for (int i = begin; i < end; i++)
        {
            float x = row[i];
            unsigned key = key_of(x);
            if (key > threshold || (key == threshold && seen++ < ties))
            {
                cumulative += weight_of(x, max, t);
                if (cumulative > ticket) { result[blockIdx.x] = i; return; }
            }
        }
    }
}
