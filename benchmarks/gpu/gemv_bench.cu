// Decode-product microbenchmark of the runtime's own kernels (kernels.cu, compiled here with Llama-3.2-1B's constants):
// the matrix-vector products of one decode step (16 layers of distinct bf16 weights, so nothing stays in L2), captured
// in a CUDA graph with programmatic dependent launches, timed with CUDA events; each kernel against the bytes it must
// read and the copy bandwidth measured in the same run.
//   nvcc -O3 -arch=sm_90 -std=c++17 -I/usr/local/cuda/include benchmarks/gpu/gemv_bench.cu -o /tmp/gemv_bench && /tmp/gemv_bench
#define HIDDEN_SIZE 2048
#define INTERMEDIATE_SIZE 8192
#define HEADS 32
#define KV_HEADS 8
#define HEAD_DIM 64
#define GROUP_SIZE 4
#define ROPE_PAIRS 32
#define LAYERS 16
#define BLOCK_TOKENS 16
#define OPERAND_BF16
__constant__ double ROPE_INV_FREQ[ROPE_PAIRS] = { 1 };
#include "../../src/KvPacket.Compute/Cuda/kernels.cu"
#include <cstdio>
#include <vector>
#include <algorithm>
#include <functional>

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

// kernels.cu's GEMV_SPLIT for bf16 operands, on the host.
static int GEMV_SPLIT_HOST(int cols) { return cols * 2 >= 16384 && cols % 32 == 0 ? 4 : cols * 2 >= 4096 && cols % 16 == 0 ? 2 : 1; }

template <typename... Args>
static void launch(void (*kernel)(Args...), int grid, int block, cudaStream_t stream, Args... args)
{
    cudaLaunchConfig_t config = {};
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.gridDim = grid; config.blockDim = block; config.stream = stream; config.attrs = attribute; config.numAttrs = 1;
    CHECK(cudaLaunchKernelEx(&config, kernel, args...));
}

struct Matrix { int rows, cols; std::vector<__nv_bfloat16*> layers; };

int main()
{
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    Matrix qkv{ (HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN_SIZE }, o{ HIDDEN_SIZE, HEADS * HEAD_DIM }, gate_up{ 2 * INTERMEDIATE_SIZE, HIDDEN_SIZE },
        down{ HIDDEN_SIZE, INTERMEDIATE_SIZE }, classifier{ 128256, HIDDEN_SIZE };
    Matrix* all[] = { &qkv, &o, &gate_up, &down };
    for (Matrix* m : all)
        for (int l = 0; l < LAYERS; l++) { __nv_bfloat16* p; CHECK(cudaMalloc(&p, 2L * m->rows * m->cols)); CHECK(cudaMemset(p, 0x3c, 2L * m->rows * m->cols)); m->layers.push_back(p); }
    { __nv_bfloat16* p; CHECK(cudaMalloc(&p, 2L * classifier.rows * classifier.cols)); CHECK(cudaMemset(p, 0x3c, 2L * classifier.rows * classifier.cols)); classifier.layers.push_back(p); }
    __nv_bfloat16* x; float* y;
    CHECK(cudaMalloc(&x, 2L * 8 * INTERMEDIATE_SIZE)); CHECK(cudaMemset(x, 0x3c, 2L * 8 * INTERMEDIATE_SIZE));
    CHECK(cudaMalloc(&y, 4L * 8 * 128256));
    // Copy bandwidth, as kvpacket cuda bench measures it.
    char *a, *b; size_t bytes = 1L << 30;
    CHECK(cudaMalloc(&a, bytes)); CHECK(cudaMalloc(&b, bytes));
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start)); CHECK(cudaEventCreate(&stop));
    auto time = [&](std::function<void()> work, int repeats) {
        work(); CHECK(cudaStreamSynchronize(stream));
        std::vector<float> ms;
        for (int r = 0; r < repeats; r++) { CHECK(cudaEventRecord(start, stream)); work(); CHECK(cudaEventRecord(stop, stream)); CHECK(cudaEventSynchronize(stop)); float t; cudaEventElapsedTime(&t, start, stop); ms.push_back(t); }
        std::sort(ms.begin(), ms.end());
        return ms[ms.size() / 2];
    };
    double copy = 2.0 * bytes / (time([&] { CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream)); }, 20) / 1e3) / 1e9;
    printf("copy bandwidth %.0f GB/s\n", copy);

    auto graph_of = [&](std::function<void()> enqueue) {
        cudaGraph_t graph; cudaGraphExec_t exec;
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
        enqueue();
        CHECK(cudaStreamEndCapture(stream, &graph));
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        return exec;
    };
    auto current = [&](const Matrix& m, int l, int tokens) {
        // the runtime's formula: RoundUpToPowerOf2(8192 / rows + 1) / 2, clamped to [1, 8]
        unsigned v = 8192 / m.rows + 1, p = 1; while (p < v) p <<= 1;
        int warps_per_row = std::min(8, std::max(1, (int)p / 2));
        int rows_per_block = 8 / warps_per_row;
        launch(gemv, (m.rows + rows_per_block - 1) / rows_per_block, 256, stream, (const operand_t*)m.layers[l], (const operand_t*)x, y, m.rows, m.cols, tokens, 0, warps_per_row);
    };
    struct Variant { const char* name; int max_tokens; std::function<void(const Matrix&, int, int)> run; };
    std::vector<Variant> variants = {
        { "gemv (1-8 tokens)", 8, [&](const Matrix& m, int l, int t) { current(m, l, t); } },
        { "gemv_one (1 token)", 1, [&](const Matrix& m, int l, int t) {
            int split = GEMV_SPLIT_HOST(m.cols), blocks = (m.rows + 4 / split - 1) / (4 / split);
            launch(m.cols == INTERMEDIATE_SIZE ? gemv_one_ffn : gemv_one_hidden, blocks, 128, stream, (const operand_t*)m.layers[l], (const operand_t*)x, y, m.rows, 0); } },
    };
    const char* names[] = { "qkv", "o", "gate/up", "down" };
    for (int tokens : { 1, 8 })
        for (auto& v : variants)
        {
            if (tokens > v.max_tokens) continue;
            printf("%s, %d token(s):\n", v.name, tokens);
            double total_bytes = 0;
            for (int i = 0; i < 4; i++)
            {
                const Matrix& m = *all[i];
                auto exec = graph_of([&] { for (int l = 0; l < LAYERS; l++) v.run(m, l, tokens); });
                float ms = time([&] { CHECK(cudaGraphLaunch(exec, stream)); }, 30);
                double per = 2.0 * m.rows * m.cols;
                printf("  %-8s %7.2f us each, %6.0f GB/s (%.2f of copy)\n", names[i], ms * 1e3 / LAYERS, per * LAYERS / (ms / 1e3) / 1e9, per * LAYERS / (ms / 1e3) / 1e9 / copy);
                total_bytes += per * LAYERS;
            }
            auto exec = graph_of([&] { for (int l = 0; l < LAYERS; l++) for (int i = 0; i < 4; i++) v.run(*all[i], l, tokens); v.run(classifier, 0, tokens); });
            float ms = time([&] { CHECK(cudaGraphLaunch(exec, stream)); }, 30);
            total_bytes += 2.0 * classifier.rows * classifier.cols;
            printf("  decode step's products (16 layers + classifier): %.3f ms, %.0f GB/s (%.2f of copy)\n", ms, total_bytes / (ms / 1e3) / 1e9, total_bytes / (ms / 1e3) / 1e9 / copy);
        }
    return 0;
}
