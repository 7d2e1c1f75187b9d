#!/usr/bin/env bash
# The CUDA backend's checks and benchmarks on a machine with the NVIDIA driver and CUDA libraries but no dotnet.
#   here  (with dotnet):  benchmarks/gpu/run.sh publish   -> .gpu/kvpacket.tar.gz, a self-contained linux-x64 build
#   there (the GPU box):  benchmarks/gpu/run.sh run OUTDIR [stories260K.bin]      (inference: parity and speed)
#                         benchmarks/gpu/run.sh train OUTDIR                      (training: gradients vs CPU, speed vs PyTorch)
# .gpu/ is ignored by git; put what the GPU machine needs there (the build, and a checkpoint to check against).
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
publish)
    rm -rf .gpu/publish
    dotnet publish src/kvpacket -c Release -r linux-x64 --self-contained -o .gpu/publish -p:DebugType=none >/dev/null
    tar czf .gpu/kvpacket.tar.gz -C .gpu/publish .
    ls -la .gpu/kvpacket.tar.gz
    ;;
run)
    out="${2:?output directory}"
    mkdir -p "$out" /tmp/kvpacket-gpu
    tar xzf .gpu/kvpacket.tar.gz -C /tmp/kvpacket-gpu
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    k=/tmp/kvpacket-gpu/kvpacket
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
    status=0
    if [[ -n "${3:-}" ]]; then
        "$k" cuda check -m "$3" --weights F32 --kv-type F32 -n 128 | tee -a "$out/check.txt" || status=1
        "$k" cuda check -m "$3" --weights F32 --kv-type F16 -n 128 | tee -a "$out/check.txt" || status=1
    fi
    "$k" cuda check --shape qwen2.5-0.5b --weights F32 --kv-type F32 -n 16 | tee -a "$out/check.txt" || status=1
    # Prompts past 16 tokens take the tensor-core prefill attention (head dims 64 and 128, GQA groups 7, 6 and 4).
    "$k" cuda check --shape qwen2.5-0.5b --weights BF16 --kv-type F16 -n 16 --prompt-tokens 200 | tee -a "$out/check.txt" || status=1
    "$k" cuda check --shape qwen2.5-1.5b --weights F32 --kv-type F16 -n 16 --prompt-tokens 200 | tee -a "$out/check.txt" || status=1
    "$k" cuda check --shape llama-3.2-1b --weights BF16 --kv-type F16 -n 16 --prompt-tokens 300 | tee -a "$out/check.txt" || status=1
    "$k" cuda bench --shape llama-3.2-1b --weights BF16 --out "$out" | tee -a "$out/bench.txt" || status=1
    python3 benchmarks/gpu/torch_baseline.py models/llama-3.2-1b.json | tee -a "$out/bench.txt" || status=1
    if command -v nvcc >/dev/null; then
        nvcc -O3 -arch=native -std=c++17 -I/usr/local/cuda/include benchmarks/gpu/gemv_bench.cu -o /tmp/kvpacket-gpu/gemv_bench &&
            /tmp/kvpacket-gpu/gemv_bench | tee "$out/gemv-bench.txt" || status=1
    fi
    exit $status
    ;;
train)
    out="${2:?output directory}"
    mkdir -p "$out" /tmp/kvpacket-gpu
    tar xzf .gpu/kvpacket.tar.gz -C /tmp/kvpacket-gpu
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    k=/tmp/kvpacket-gpu/kvpacket
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
    status=0
    "$k" cuda train-check -m tests/fixtures/stories260K/stories260K.bin | tee -a "$out/train-check.txt" || status=1
    "$k" cuda train-check -m tests/fixtures/tiny-qwen2 | tee -a "$out/train-check.txt" || status=1
    "$k" cuda train-check --shape llama-50m --layers 2 | tee -a "$out/train-check.txt" || status=1
    for round in 1 2; do   # ours and PyTorch alternating, twice
        "$k" cuda train-bench --shape llama-50m --batch 16 --length 1024 --out "$out/train-bench-ours-$round.json" | tee -a "$out/train-bench.txt" || status=1
        python3 benchmarks/gpu/torch_train.py models/llama-50m.json --batch 16 --length 1024 --out "$out/train-bench-torch-$round.json" | tee -a "$out/train-bench.txt" || status=1
    done
    "$k" cuda train-bench --shape llama-50m --batch 16 --length 1024 --recompute-activations | tee -a "$out/train-bench.txt" || status=1
    exit $status
    ;;
*)
    echo "usage: $0 publish | run OUTDIR [stories260K.bin] | train OUTDIR" >&2
    exit 2
    ;;
esac
