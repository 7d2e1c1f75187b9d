// TokenDraw's rule (src/KvPacket.Compute/Sampling/TokenDraw.cs) on the device: a cluster of DRAW_CLUSTER blocks per row
// of logits chooses that row's token — the argmax, or a draw at a temperature after top-k and top-p — so only ids cross
// the bus. Every pass reads the row (just written, so from L2); weights are exact integers, so the result does not
// depend on the order the threads add in. The blocks of a cluster (sm_90) share their histograms and partial sums
// through distributed shared memory: one block per row kept one SM busy with every exp. Needs no model constants:
// compiled as a module of its own.

#define DRAW_CLUSTER 8
#define DRAW_THREADS 512
#define CLUSTER_THREADS (DRAW_CLUSTER * DRAW_THREADS)
#define DRAW_WARPS (DRAW_THREADS / 32)
#define PARTS (DRAW_CLUSTER * DRAW_WARPS)   // warps of a cluster: the parts find_crossing narrows among
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
#define IN_FLIGHT 16   // loads a thread issues before using any: the passes are latency-bound otherwise

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

#define RADIX_BINS 2048

// Thread-block clusters in PTX (cooperative_groups needs libcu++ headers NVRTC is not given): this block's rank, a
// barrier of the whole cluster (release / acquire: shared-memory writes before it are seen after it), and the address of
// the same shared variable in another block of the cluster, for ordinary loads and stores.
__device__ __forceinline__ unsigned cluster_rank()
{
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    return rank;
}

__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

template <typename T>
__device__ __forceinline__ T* in_block(T* p, unsigned rank)
{
    unsigned long long mapped;
    asm volatile("mapa.u64 %0, %1, %2;" : "=l"(mapped) : "l"(p), "r"(rank));
    return (T*)mapped;
}

// The cluster's shared state, one copy per block; the other blocks read it through distributed shared memory.
struct DrawShared
{
    unsigned low[RADIX_BINS], high[RADIX_BINS], carry[RADIX_BINS];   // this block's histogram (a weight's words, carries)
    u64 histogram[RADIX_BINS];                                        // the cluster's, summed
    u64 parts[PARTS];                                                 // find_crossing: every warp's sum
    u64 warp_u64[2][DRAW_WARPS];                                      // warps' shares of one or two block sums
    float warp_f[DRAW_WARPS];
    u64 block_u64[2];                                                 // this block's share of a cluster sum
    float block_f;
    u64 decided[2];                                                   // a decision every thread reads
    int found;
};

// Sums (or maxima) over the cluster: each block reduces, the blocks' results are read from every block. Every thread of
// the cluster returns the same.
__device__ float cluster_max(float v, DrawShared& s)
{
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    if ((threadIdx.x & 31) == 0) s.warp_f[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0)
    {
        float m = s.warp_f[0];
        for (int w = 1; w < DRAW_WARPS; w++) m = fmaxf(m, s.warp_f[w]);
        s.block_f = m;
    }
    cluster_sync();
    v = *in_block(&s.block_f, 0);
    for (int r = 1; r < DRAW_CLUSTER; r++) v = fmaxf(v, *in_block(&s.block_f, r));
    cluster_sync();
    return v;
}

// Two sums at once over the cluster (a pass often needs two).
__device__ void cluster_sum(u64* a, u64* b, DrawShared& s)
{
    u64 x = *a, y = *b;
    for (int o = 16; o > 0; o /= 2) { x += __shfl_xor_sync(FULL_MASK, x, o); y += __shfl_xor_sync(FULL_MASK, y, o); }
    if ((threadIdx.x & 31) == 0) { s.warp_u64[0][threadIdx.x / 32] = x; s.warp_u64[1][threadIdx.x / 32] = y; }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        u64 tx = 0, ty = 0;
        for (int w = 0; w < DRAW_WARPS; w++) { tx += s.warp_u64[0][w]; ty += s.warp_u64[1][w]; }
        s.block_u64[0] = tx;
        s.block_u64[1] = ty;
    }
    cluster_sync();
    x = 0;
    y = 0;
    for (int r = 0; r < DRAW_CLUSTER; r++)
    {
        const u64* remote = in_block(s.block_u64, r);
        x += remote[0];
        y += remote[1];
    }
    cluster_sync();
    *a = x;
    *b = y;
}

// Exclusive prefix sum of v over the block's threads in order; *total gets the block's sum.
__device__ u64 block_exclusive_scan(u64 v, DrawShared& s, u64* total)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    u64 inclusive = v;
    for (int o = 1; o < 32; o *= 2)
    {
        u64 other = __shfl_up_sync(FULL_MASK, inclusive, o);
        if (lane >= o) inclusive += other;
    }
    if (lane == 31) s.warp_u64[0][warp] = inclusive;
    __syncthreads();
    u64 before = 0, all = 0;
    for (int w = 0; w < DRAW_WARPS; w++)
    {
        if (w < warp) before += s.warp_u64[0][w];
        all += s.warp_u64[0][w];
    }
    __syncthreads();
    *total = all;
    return before + inclusive - v;
}

// The first index i of [0, n) at which the running sum of value(j, row[j]) for j = 0..i in id order passes target (<
// the sum of all): the cluster narrows the range PARTS-fold a round (a warp per part, its lanes reading consecutive ids),
// then scans the last CLUSTER_THREADS ids one per thread. Every thread of the cluster returns the same.
template <typename Value>
__device__ int find_crossing(const float* row, int n, u64 target, Value value, DrawShared& s)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x / 32, rank = (int)cluster_rank();
    int lo = 0, hi = n;
    while (hi - lo > CLUSTER_THREADS)
    {
        int part = (hi - lo + PARTS - 1) / PARTS;
        int begin = lo + (rank * DRAW_WARPS + warp) * part, end = min(hi, begin + part);
        u64 sum = 0;
        for_each(row, begin + lane, end, 32, [&](int i, float x) { sum += value(i, x); });
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(FULL_MASK, sum, o);
        if (lane == 0) s.parts[rank * DRAW_WARPS + warp] = sum;
        cluster_sync();
        // Every block gathers all the parts' sums, and its first warp finds the part the target falls in.
        for (int p = threadIdx.x; p < PARTS; p += DRAW_THREADS)
            s.histogram[p] = *in_block(&s.parts[p], p / DRAW_WARPS);
        __syncthreads();
        if (warp == 0)
        {
            const int each = PARTS / 32;
            u64 mine = 0;
            for (int j = 0; j < each; j++) mine += s.histogram[lane * each + j];
            u64 inclusive = mine;
            for (int o = 1; o < 32; o *= 2)
            {
                u64 other = __shfl_up_sync(FULL_MASK, inclusive, o);
                if (lane >= o) inclusive += other;
            }
            u64 before = inclusive - mine;
            unsigned crossing = __ballot_sync(FULL_MASK, before <= target && target < inclusive);
            if (crossing == 0 && lane == 31) { s.decided[0] = PARTS - 1; s.decided[1] = inclusive - s.histogram[PARTS - 1]; }
            if (crossing != 0 && lane == __ffs(crossing) - 1)
            {
                int p = lane * each;
                while (before + s.histogram[p] <= target) before += s.histogram[p++];
                s.decided[0] = (u64)p;
                s.decided[1] = before;
            }
        }
        __syncthreads();
        int chosen = (int)s.decided[0];
        target -= s.decided[1];
        cluster_sync();   // no block may overwrite its parts while another still reads them
        lo += chosen * part;
        hi = min(hi, lo + part);
    }
    int i = lo + rank * DRAW_THREADS + threadIdx.x;
    u64 v = i < hi ? value(i, row[i]) : 0, block_total;
    u64 start = block_exclusive_scan(v, s, &block_total);
    if (threadIdx.x == 0) s.block_u64[0] = block_total;
    cluster_sync();
    u64 before = 0;
    for (int r = 0; r < rank; r++) before += *in_block(&s.block_u64[0], r);
    start += before;
    if (i < hi && start <= target && target < start + v)
        for (int r = 0; r < DRAW_CLUSTER; r++) *in_block(&s.found, r) = i;
    cluster_sync();
    return s.found;
}

// Radix select over the keys >= floor, from the top, in digits of 11, 11 and 10 bits (an 8-bit first digit is nearly
// the same for every logit, and the histogram's atomics then all land on a few bins): the key at which the descending
// running count (by_weight 0) or weight (1) first reaches target. *remaining gets what is still to take at that key
// (>= 1), or -1 when everything at or above the floor totals less than the target. Every thread of the cluster returns
// the same. The histograms take 32-bit shared atomics only (64-bit ones contend badly): a weight's low word with its
// carries counted, and its high word; each block counts its share of the row, and every block sums the cluster's.
__device__ unsigned radix_select(const float* row, int n, float max, float inverse_t, int by_weight, unsigned floor, u64 target,
    long long* remaining, DrawShared& s)
{
    unsigned prefix = 0, mask = 0;
    int first = (int)cluster_rank() * DRAW_THREADS + threadIdx.x;
    for (int level = 0; level < 3; level++)
    {
        int shift = level == 0 ? 21 : level == 1 ? 10 : 0, bins = level == 2 ? 1024 : 2048;
        for (int b = threadIdx.x; b < bins; b += DRAW_THREADS) s.low[b] = s.high[b] = s.carry[b] = 0;
        __syncthreads();
        for_each(row, first, n, CLUSTER_THREADS, [&](int, float x)
        {
            unsigned key = key_of(x);
            if ((key & mask) != prefix || key < floor) return;
            int digit = (key >> shift) & (bins - 1);
            if (!by_weight) { atomicAdd(&s.low[digit], 1u); return; }
            u64 w = weight_of(x, max, inverse_t);
            unsigned part = (unsigned)w, old = atomicAdd(&s.low[digit], part);
            if (old + part < old) atomicAdd(&s.carry[digit], 1u);
            if (w >> 32) atomicAdd(&s.high[digit], (unsigned)(w >> 32));
        });
        cluster_sync();
        for (int b = threadIdx.x; b < bins; b += DRAW_THREADS)
        {
            u64 sum = 0;
            for (int r = 0; r < DRAW_CLUSTER; r++)
            {
                DrawShared* remote = in_block(&s, r);
                sum += ((u64)(remote->high[b] + remote->carry[b]) << 32) + remote->low[b];
            }
            s.histogram[b] = sum;
        }
        cluster_sync();   // every block has read every block's counts before any clears its own
        // Warp 0 finds the digit: lane l holds the l-th run of bins/32 digits counted from the top.
        if (threadIdx.x < 32)
        {
            int lane = threadIdx.x, run = bins / 32, top = bins - 1 - run * lane;
            u64 sum = 0;
            for (int j = 0; j < run; j++) sum += s.histogram[top - j];
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
                if (lane == 0) s.decided[0] = 0xffffffffffffffffull;
            }
            else if (lane == __ffs(crossing) - 1)
            {
                int digit = top;
                while (above + s.histogram[digit] < target) above += s.histogram[digit--];
                s.decided[0] = (u64)digit;
                s.decided[1] = target - above;
            }
        }
        __syncthreads();
        u64 digit = s.decided[0], left = s.decided[1];
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

// result[r] = the token batch.rows[r] chooses from logits[r][0..n); a cluster of DRAW_CLUSTER blocks of DRAW_THREADS per
// row (the grid is rows · DRAW_CLUSTER blocks). The temperature is > 0 (the argmax is top_k 1: the largest logit, lowest
// id on ties, at any temperature).
extern "C" __global__ void __cluster_dims__(DRAW_CLUSTER, 1, 1) __launch_bounds__(DRAW_THREADS)
token_draw(const float* __restrict__ logits, int n, DrawBatch batch, int* result)
{
    __shared__ DrawShared s;
    int row_index = blockIdx.x / DRAW_CLUSTER, first = (int)cluster_rank() * DRAW_THREADS + threadIdx.x;
    const float* row = logits + (long)row_index * n;
    TokenDraw draw = batch.rows[row_index];

    float local = __int_as_float(0xff800000);
    for_each(row, first, n, CLUSTER_THREADS, [&](int, float x) { local = fmaxf(local, x); });
    float max = cluster_max(local, s);
    float t = 1.0f / draw.temperature;   // the inverse temperature, as TokenDraw rounds it

    // (threshold, ties): every key above the threshold, and the first `ties` (by id) equal to it.
    unsigned threshold = 0;
    long long ties = n;
    if (draw.top_k > 0 && draw.top_k < n)
        threshold = radix_select(row, n, max, t, 0, 0, (u64)draw.top_k, &ties, s);
    if (draw.top_p < 1.0f)
    {
        u64 total = 0, unused = 0;
        for_each(row, first, n, CLUSTER_THREADS, [&](int, float x) { total += weight_of(x, max, t); });
        cluster_sum(&total, &unused, s);
        u64 target = (u64)((double)draw.top_p * (double)total);
        if (target == 0) target = 1;
        long long remaining;
        unsigned cut = radix_select(row, n, max, t, 1, threshold, target, &remaining, s);
        if (remaining >= 0)
        {
            u64 tie = weight_of(value_of(cut), max, t);
            long long need = (long long)(((u64)remaining + tie - 1) / tie);
            if (cut != threshold || need <= ties) { threshold = cut; ties = need; }
        }
    }

    // What is kept weighs W = (weight above the threshold) + (ties kept) · (a tie's weight).
    u64 above = 0, equal = 0;
    for_each(row, first, n, CLUSTER_THREADS, [&](int, float x)
    {
        unsigned key = key_of(x);
        if (key > threshold) above += weight_of(x, max, t);
        else if (key == threshold) equal++;
    });
    cluster_sum(&above, &equal, s);
    // The kept ties are those below `cutoff` by id: the one after the ties-th tie, or all of them.
    int cutoff = n;
    if ((long long)equal > ties)
        cutoff = 1 + find_crossing(row, n, (u64)(ties - 1), [&](int, float x) { return key_of(x) == threshold ? 1ull : 0ull; }, s);
    u64 kept = above + (u64)min((long long)equal, ties) * weight_of(value_of(threshold), max, t);
    u64 ticket = __umul64hi(draw.bits, kept);
    int token = find_crossing(row, n, ticket, [&](int i, float x)
    {
        unsigned key = key_of(x);
        return key > threshold || (key == threshold && i < cutoff) ? weight_of(x, max, t) : 0ull;
    }, s);
    if (cluster_rank() == 0 && threadIdx.x == 0) result[row_index] = token;
}
