#!/usr/bin/env bash
# The CUDA backend's checks and benchmarks on a machine with the NVIDIA driver and CUDA libraries but no dotnet.
#   here  (with dotnet):  benchmarks/gpu/run.sh publish   -> .gpu/kvpacket.tar.gz, a self-contained linux-x64 build
#   there (the GPU box):  benchmarks/gpu/run.sh run OUTDIR [stories260K.bin]      (inference: parity and speed)
#                         benchmarks/gpu/run.sh train OUTDIR [PART…]              (training: check adapter pretrain finetune distill speed qa qa-adapters qa-tokenizer qa-finetune qa-reasoning)
#                         benchmarks/gpu/run.sh rag OUTDIR [PART…]                (the RAG engine on the GPU: check demo qa bench serve draw)
#                         benchmarks/gpu/run.sh ilgpu OUTDIR                      (the ILGPU backend on ILGPU's CUDA accelerator: parity, and speed beside NVRTC)
#                         benchmarks/gpu/run.sh tokenizers OUTDIR                 (our byte-level BPE vs Hugging Face tokenizers over every BMP code point)
#                         benchmarks/gpu/run.sh quantised OUTDIR [TYPE…]          (GGUF block-quantised weights kept as stored on the GPU: parity, then speed)
# .gpu/ is ignored by git; put what the GPU machine needs there (the build, and a checkpoint to check against).
set -euo pipefail
cd "$(dirname "$0")/../.."
# Unpacks the build (the CLI is then $k, with the CUDA libraries on the path) and notes the GPU in OUTDIR/gpu.txt.
unpack() {
    mkdir -p "$1" /tmp/kvpacket-gpu
    tar xf .gpu/kvpacket.tar.gz -C /tmp/kvpacket-gpu
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    k=/tmp/kvpacket-gpu/kvpacket
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$1/gpu.txt"
}
# Training questions a model has not read (seed 1, 4-10 documents): the N + 200 lines after the first QA_SKIP (600,000:
# what kvqa-17m was pre-trained on; 700,200 for revision 2, whose chain fine-tune read the next 100,200) as DIR/unseen.jsonl,
# beside the held-out splits. Usage: unseen DIR N LOG [corpus options].
unseen() {
    local dir=$1 n=$2 log=$3
    shift 3
    "$k" corpus --out $dir --train $((${QA_SKIP:-600000} + n + 200)) --min-train-documents 4 --validation 10 --test 2000 "$@" | tee -a "$log"
    tail -n $((n + 200)) $dir/train.jsonl > $dir/unseen.jsonl
}
# The variant NAME of the PREFIX-NAME.json eval results whose MODE F1 over all questions is highest. Usage: best PREFIX MODE.
best() {
    python3 -c "import json,glob; print(max(glob.glob('$1-*.json'), key=lambda f: [s['F1'] for s in json.load(open(f))['scores'] if s['Mode']=='$2' and s['Type']=='all'][0])[len('$1-'):-5])"
}
case "${1:-}" in
publish)
    rm -rf .gpu/publish
    dotnet publish src/kvpacket -c Release -r linux-x64 --self-contained -o .gpu/publish -p:DebugType=none -p:KvPacketDeviceBuild=true >/dev/null
    # xz, and without the runtime's debugger, LTTng and standalone-GC libraries: the build travels beside the 35 MB model.
    tar cJf .gpu/kvpacket.tar.gz -C .gpu/publish --exclude='libmscordaccore.so' --exclude='libmscordbi.so' --exclude='libclrgc*.so' \
        --exclude='libcoreclrtraceptprovider.so' --exclude='createdump' .
    ls -la .gpu/kvpacket.tar.gz
    ;;
run)
    out="${2:?output directory}"
    unpack "$out"
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
ilgpu)
    # The ILGPU backend on ILGPU's CUDA accelerator against the CPU, and its speed beside the NVRTC backend's.
    out="${2:?output directory}"
    unpack "$out"
    status=0
    "$k" ilgpu check -m tests/fixtures/stories260K/stories260K.bin | tee -a "$out/ilgpu-check.txt" || status=1
    "$k" ilgpu check --shape qwen2.5-0.5b -n 8 | tee -a "$out/ilgpu-check.txt" || status=1
    # Decode and prefill at the Llama-3.2-1B shape, f32, beside the NVRTC backend, per stage.
    "$k" ilgpu bench --shape llama-3.2-1b --out "$out" | tee -a "$out/ilgpu-bench.txt" || status=1
    exit $status
    ;;
quantised)
    # Each block type (the K types need 256-column blocks: llama-50m's 512 and 1,536 are) against the same matrices widened
    # to f32 on the CPU, f32 operands and KV (the exact limit), and a Q4_K_M mix (q6_K beside q4_K in one q/k/v product)
    # with bf16 operands; then decode and prefill at the Llama-3.2-1B shape against the copy roofline (QUANTISED_BENCH: the
    # types benched, default "Q4_K Q8_0 BF16").
    out="${2:?output directory}"
    unpack "$out"
    status=0
    types="${*:3}"
    # With bf16 operands, steps of 9–128 tokens take the tensor-core products: checked against cuBLAS on dequantised slices.
    for t in ${types:-Q8_0 Q4_0 Q4_K Q5_K Q6_K}; do
        "$k" cuda check --shape llama-50m --weights $t --operands F32 --kv-type F32 -n 32 --prompt-tokens 40 | tee -a "$out/check.txt" || status=1
        "$k" cuda check --shape llama-50m --weights $t --operands BF16 --kv-type F16 -n 32 --prompt-tokens 40 | tee -a "$out/check.txt" || status=1
    done
    "$k" synth --shape llama-50m --out /tmp/llama-50m-bf16 >/dev/null
    "$k" quantize -m /tmp/llama-50m-bf16 --type Q4_K_M -o /tmp/llama-50m-q4_k_m.gguf | tee -a "$out/check.txt"
    "$k" cuda check -m /tmp/llama-50m-q4_k_m.gguf --weights BF16 --kv-type F16 -n 32 --prompt-tokens 40 | tee -a "$out/check.txt" || status=1
    for t in ${QUANTISED_BENCH-Q4_K Q8_0 BF16}; do
        "$k" cuda bench --shape llama-3.2-1b --weights $t --repeats 20 --prefill-tokens 2048 --out "$out" | tee -a "$out/bench.txt" || status=1
    done
    exit $status
    ;;
tokenizers)
    # Our byte-level BPE against Hugging Face tokenizers (installed there): every BMP code point from U+0080 in two
    # contexts, four-byte ones sampled, 60,000 random mixes — for the two fixture tokenizers and the shipped model's.
    out="${2:?output directory}"
    unpack "$out"
    status=0
    python3 benchmarks/gpu/unicode_sweep.py /tmp/unicode-sweep.txt
    for t in tests/fixtures/bpe-gpt2/tokenizer.json tests/fixtures/bpe-llama3/tokenizer.json models/kvqa-17m/tokenizer.json; do
        echo "$t:" | tee -a "$out/tokenizers.txt"
        "$k" tokenizer samples /tmp/unicode-sweep.txt --tokenizer "$t" --count 1000000 --out /tmp/unicode-sweep.jsonl | tee -a "$out/tokenizers.txt"
        python3 benchmarks/gpu/tokenizer_check.py "$t" /tmp/unicode-sweep.jsonl | tee -a "$out/tokenizers.txt" || status=1
    done
    exit $status
    ;;
train)
    # Parts (default all): check adapter pretrain finetune distill speed
    out="${2:?output directory}"
    shift 2
    parts="${*:-check adapter pretrain finetune distill speed}"
    unpack "$out"
    d=/tmp/kvpacket-dumps
    stories=tests/fixtures/stories260K/stories260K.bin
    status=0
    if [[ " $parts " == *" check "* ]]; then
        # Gradients against the CPU (float64) and PyTorch autograd; distillation loss against the engine's KL.
        "$k" cuda train-check -m $stories --dump $d/stories260K | tee -a "$out/train-check.txt" || status=1
        "$k" cuda train-check -m tests/fixtures/tiny-qwen2 --dump $d/tiny-qwen2 | tee -a "$out/train-check.txt" || status=1
        "$k" cuda train-check --shape llama-50m --layers 2 --dump $d/llama-50m-2 | tee -a "$out/train-check.txt" || status=1
        python3 benchmarks/gpu/torch_grad.py $d/*/* 2>/dev/null | tee "$out/torch-grad.txt" || status=1
    fi
    if [[ " $parts " == *" adapter "* ]]; then
        # 200-step adapter runs on the GPU, seeds 1-4 (compare with the same commands with --device cpu).
        for seed in 1 2 3 4; do
            "$k" train -m $stories --steps 200 --patience 0 --seed $seed --device cuda --out "$out/train-stories260k-cuda-seed$seed.json" 2>&1 | tail -2 | tee -a "$out/train-gpu.txt" || status=1
        done
    fi
    if [[ " $parts " == *" pretrain "* ]]; then
        # Pre-training: a run resumed from its checkpoint ends bit-for-bit where an uninterrupted one does.
        python3 -c "
import random; random.seed(1)
with open('/tmp/corpus.tokens','w') as f:
    for _ in range(3000):
        a, s = random.randrange(509), random.randrange(1, 7)
        f.write(' '.join(str(3 + (a + i * s) % 509) for i in range(random.randrange(40, 160))) + '\n')"
        p="pretrain --model-shape stories260k --data /tmp/corpus.tokens --steps 40 --batch 8 --length 256 --warmup 5 --learning-rate 3e-3 --checkpoint-every 10 --log-every 10 --save-type F32"
        "$k" $p --checkpoint /tmp/a.ckpt --out /tmp/run-a --loss-curve "$out/pretrain-curve.csv" | tee -a "$out/pretrain.txt" || status=1
        "$k" $p --checkpoint /tmp/b.ckpt --out /tmp/run-b --stop-after 15 | tee -a "$out/pretrain.txt" || status=1
        "$k" $p --checkpoint /tmp/b.ckpt --out /tmp/run-b | tee -a "$out/pretrain.txt" || status=1
        sha256sum /tmp/run-a/model.safetensors /tmp/run-b/model.safetensors | tee -a "$out/pretrain.txt"
        [[ "$(sha256sum < /tmp/run-a/model.safetensors)" == "$(sha256sum < /tmp/run-b/model.safetensors)" ]] && echo "resume: identical" | tee -a "$out/pretrain.txt" || { echo "resume: DIFFERENT" | tee -a "$out/pretrain.txt"; status=1; }
        "$k" generate -m /tmp/run-a --tokens 1,100,103,106 -n 12 | tee -a "$out/pretrain.txt" || status=1
    fi
    if [[ " $parts " == *" finetune "* ]]; then
        "$k" finetune -m $stories --links 5 --steps 150 --batch 16 --learning-rate 3e-4 --eval-every 50 --out /tmp/finetuned --store /tmp/finetune-store | tee -a "$out/finetune.txt" || status=1
    fi
    if [[ " $parts " == *" distill "* ]]; then
        "$k" cuda distill-bench --shape llama-3.2-1b | tee -a "$out/train-bench.txt" || status=1
        "$k" cuda distill-bench --shape llama-3.2-1b --recompute-activations | tee -a "$out/train-bench.txt" || status=1
        "$k" cuda distill-bench --shape llama-3.2-1b --kept-attention | tee -a "$out/train-bench.txt" || status=1
    fi
    if [[ " $parts " == *" qa "* ]]; then
        # Our QA model from scratch: benchmark, tokenizer, token file, pre-training (the commands of models/kvqa-17m's card).
        # Resumable: a second call on the same (warm) machine reuses the data and continues from the checkpoint; the
        # model is written when the run ends or its time is up. QA_EVAL questions of the test split are then answered.
        # QA_SPLIT_DIGITS=1: a tokenizer that spells numbers digit by digit (for the comparison questions); QA_REASONING=1:
        # multi-hop answers state what they follow from first (corpus --reasoning: a comparison's values, a chain's entities).
        # QA_CORPUS: more corpus options (e.g. "--max-documents 20"); QA_LENGTH and QA_BATCH: tokens per packed sequence and
        # sequences per step (2048 and 16 keep a step's 32k tokens with examples of up to 20 documents). QA_INIT: a model to
        # continue from (its weights and tokenizer) instead of random weights, with QA_LR and QA_WARMUP for the schedule.
        q=/tmp/kvqa
        mkdir -p $q
        if [[ ! -f $q/train.tokens ]]; then
            "$k" corpus --out $q/data --train ${QA_EXAMPLES:-600000} --train-questions 4 --validation 1000 --test 2000 ${QA_REASONING:+--reasoning} ${QA_CORPUS:-} | tee -a "$out/qa.txt"
            if [[ -n "${QA_INIT:-}" ]]; then
                cp "$QA_INIT/tokenizer.json" $q/tokenizer.json
            else
                head -n 40000 $q/data/train.jsonl > $q/tokenizer-sample.jsonl   # the tokenizer learns from the first 40k examples
                "$k" tokenizer train $q/tokenizer-sample.jsonl --vocab 8192 ${QA_SPLIT_DIGITS:+--split-digits} --out $q/tokenizer.json | tee -a "$out/qa.txt"
            fi
            "$k" tokenizer encode $q/data/train.jsonl --tokenizer $q/tokenizer.json --out $q/train.tokens.partial | tee -a "$out/qa.txt"
            mv $q/train.tokens.partial $q/train.tokens
        fi
        start="--model-shape kvqa-17m"
        [[ -z "${QA_INIT:-}" ]] || start="--init $QA_INIT"
        "$k" pretrain $start --tokenizer $q/tokenizer.json --data $q/train.tokens --examples --answer-weight 5 \
            --steps ${QA_STEPS:-36000} --batch ${QA_BATCH:-32} --length ${QA_LENGTH:-1024} --warmup ${QA_WARMUP:-500} --learning-rate ${QA_LR:-2e-3} --time-limit ${QA_SECONDS:-420} --log-every 1000 \
            --checkpoint $q/run.ckpt --checkpoint-every 2000 --loss-curve "$out/qa-loss.csv" --max-shard-mb 15 --out $q/kvqa-17m | tee -a "$out/qa.txt" || status=1
        if [[ "${QA_EVAL:-0}" != 0 ]]; then
            "$k" eval --task qa -m $q/kvqa-17m --split $q/data/test.jsonl --limit $QA_EVAL --modes full,closed-book,naive --device cuda --out $q/eval.json \
                | grep -v "questions, " | tee -a "$out/qa.txt" || status=1
            # Shards as they are (each under the 16 MB a file may bring back), the rest in one archive.
            mkdir -p "$out/kvqa-17m" && cp $q/kvqa-17m/model-0000* "$out/kvqa-17m/"
            tar czf "$out/qa-small.tar.gz" -C $q kvqa-17m/config.json kvqa-17m/model.safetensors.index.json kvqa-17m/tokenizer.json eval.json
        fi
    fi
    if [[ " $parts " == *" qa-adapters "* ]]; then
        # Adapters of the shipped QA model (or QA_MODEL's: /tmp/kvqa/kvqa-17m after a qa run on the same machine), frozen,
        # distilled on the GPU from the training split's questions; the store comes back as a tar, each adapter as a file,
        # and each is evaluated on the test split's first QA_EVAL questions here.
        m=${QA_MODEL:-models/kvqa-17m}
        n=${QA_ADAPTER_EXAMPLES:-3048}
        # QA_ADAPTER_CORPUS: more corpus options, e.g. "--min-documents 16 --max-documents 20 --min-train-documents 16" for
        # the harder test's questions (training and test alike).
        "$k" corpus --out /tmp/qa-adapt --train $n --validation 10 --test 2000 ${QA_REASONING:+--reasoning} ${QA_ADAPTER_CORPUS:-} | tee -a "$out/qa-adapters.txt"
        IFS=';' read -ra variants <<< "${QA_ADAPTER_VARIANTS:-kvpacket-4x4 --mode kvpacket --header 4 --trailer 4;kvlink-5 --mode kvlink --links 5;kvpacket-16x16 --mode kvpacket --header 16 --trailer 16}"
        for variant in "${variants[@]}"; do
            set -- $variant
            name=$1; shift
            "$k" train -m $m --qa /tmp/qa-adapt/train.jsonl --train-examples $(( n - 48 )) --held-out 48 "$@" --steps ${QA_ADAPTER_STEPS:-200} --batch 16 \
                --device cuda --store /tmp/qa-store --name $name --out "$out/qa-adapter-$name.json" 2>&1 | grep -v '%$' | tee -a "$out/qa-adapters.txt" || status=1
            tar czf "$out/qa-adapters-store.tar.gz" -C /tmp qa-store
            "$k" store export-adapter --store /tmp/qa-store -m $m $name --out "$out/$name.safetensors" | tee -a "$out/qa-adapters.txt" || status=1
            if [[ "${QA_EVAL:-0}" != 0 ]]; then
                evalmode=${name%%-*}
                "$k" eval --task qa -m $m --split /tmp/qa-adapt/test.jsonl --limit $QA_EVAL --modes $evalmode --adapter "$out/$name.safetensors" \
                    | grep -E "^(mode|$evalmode) " | sed "s/^/$name: /" | tee -a "$out/qa-adapters.txt" || status=1
            fi
        done
    fi
    if [[ " $parts " == *" qa-tokenizer "* ]]; then
        # The shipped tokenizer.json (or QA_MODEL's) read by Hugging Face tokenizers: 1,000 strings (unseen test-split text and odd inputs) encode alike.
        "$k" corpus --out /tmp/qa-tok --seed 7 --train 10 --validation 10 --test 300 >/dev/null
        "$k" tokenizer samples /tmp/qa-tok/test.jsonl --tokenizer ${QA_MODEL:-models/kvqa-17m}/tokenizer.json --out /tmp/qa-tok/samples.jsonl | tee -a "$out/qa-tokenizer.txt"
        python3 benchmarks/gpu/tokenizer_check.py ${QA_MODEL:-models/kvqa-17m}/tokenizer.json /tmp/qa-tok/samples.jsonl | tee -a "$out/qa-tokenizer.txt" || status=1
    fi
    if [[ " $parts " == *" qa-finetune "* ]]; then
        # KVLink's recipe on the shipped QA model: every weight and 5 link tokens fine-tuned on mixed data (half full attention,
        # half separate documents + links), answers scored, on training questions the model never saw (unseen, above;
        # QA_REASONING=1 for a model that answers with its reasoning, as revision 2 does). Variants "name batch
        # learning-rate steps"; each is evaluated on the test split's first QA_EVAL questions here, and the best kvlink
        # F1's model comes back.
        # QA_MODEL: the model to fine-tune; QA_FINETUNE_CORPUS: more corpus options (e.g. "--max-documents 20 --seed 3").
        n=${QA_FINETUNE_EXAMPLES:-200000}
        unseen /tmp/qa-ft $n "$out/qa-finetune.txt" ${QA_REASONING:+--reasoning} ${QA_FINETUNE_CORPUS:-}
        IFS=';' read -ra variants <<< "${QA_FINETUNE_VARIANTS:-b128-lr1e-4 128 1e-4 1500}"
        for variant in "${variants[@]}"; do
            set -- $variant
            "$k" finetune --mode kvlink -m ${QA_MODEL:-models/kvqa-17m} --qa /tmp/qa-ft/unseen.jsonl --train-examples $n --held-out 200 --links 5 \
                --batch $2 --learning-rate $3 --steps $4 --warmup 100 --eval-every 250 --time-limit ${QA_SECONDS:-300} --max-shard-mb 15 --out /tmp/ft-$1 \
                | sed "s/^/$1: /" | tee -a "$out/qa-finetune.txt" || status=1
            "$k" eval --task qa -m /tmp/ft-$1 --split /tmp/qa-ft/test.jsonl --limit ${QA_EVAL:-400} --modes full,naive,kvlink --adapter /tmp/ft-$1/kvlink-adapter.safetensors \
                --out "$out/eval-ft-$1.json" | grep -E '^(mode|full|naive|kvlink) ' | sed "s/^/$1: /" | tee -a "$out/qa-finetune.txt" || status=1
        done
        tar czf "$out/eval-ft.tar.gz" -C "$out" $(cd "$out" && ls eval-ft-*.json)
        best=$(best "$out/eval-ft" kvlink)
        echo "best kvlink F1: $best" | tee -a "$out/qa-finetune.txt"
        rm "$out"/eval-ft-*.json
        mkdir -p "$out/kvqa-17m-kvlink" && cp /tmp/ft-$best/{config.json,kvlink-adapter.safetensors,model-0000*} "$out/kvqa-17m-kvlink/"
    fi
    if [[ " $parts " == *" qa-reasoning "* ]]; then
        # The shipped QA model (or QA_MODEL's) taught to state what an answer follows from before it ("X: 1843; Y: 1901; so X"):
        # the whole model on full attention, answers scored, on training questions it never saw (unseen, above, written
        # with --reasoning). Variants "name batch learning-rate steps"; each is scored on the test split's first QA_EVAL
        # questions; the best full-recompute F1's model comes back (shards, config, index).
        n=${QA_REASONING_EXAMPLES:-200000}
        unseen /tmp/qa-rs $n "$out/qa-reasoning.txt" --reasoning
        IFS=';' read -ra variants <<< "${QA_REASONING_VARIANTS:-lr1e-4 32 1e-4 5000;lr3e-5 32 3e-5 5000}"
        for variant in "${variants[@]}"; do
            set -- $variant
            "$k" finetune --mode full -m ${QA_MODEL:-models/kvqa-17m} --qa /tmp/qa-rs/unseen.jsonl --train-examples $n --held-out 200 \
                --batch $2 --learning-rate $3 --steps $4 --warmup 100 --eval-every 500 --time-limit ${QA_SECONDS:-150} --max-shard-mb 15 --out /tmp/rs-$1 \
                | sed "s/^/$1: /" | tee -a "$out/qa-reasoning.txt" || status=1
            "$k" eval --task qa -m /tmp/rs-$1 --split /tmp/qa-rs/test.jsonl --limit ${QA_EVAL:-1000} --modes ${QA_REASONING_MODES:-full,naive} --device cuda \
                --out "$out/eval-rs-$1.json" | grep -E "^(mode|full|naive|closed-book) |gold" | sed "s/^/$1: /" | tee -a "$out/qa-reasoning.txt" || status=1
        done
        best=$(best "$out/eval-rs" full)
        echo "best full F1: $best" | tee -a "$out/qa-reasoning.txt"
        tar czf "$out/eval-rs.tar.gz" -C "$out" $(cd "$out" && ls eval-rs-*.json) && rm "$out"/eval-rs-*.json
        mkdir -p "$out/kvqa-17m-reasoning" && cp /tmp/rs-$best/{config.json,model.safetensors.index.json,model-0000*} "$out/kvqa-17m-reasoning/"
    fi
    if [[ " $parts " == *" speed "* ]]; then
        # Full training of the 46M shape against PyTorch (eager and torch.compile), alternating, twice.
        for round in 1 2; do
            "$k" cuda train-bench --shape llama-50m --batch 16 --length 1024 --out "$out/train-bench-ours-$round.json" | tee -a "$out/train-bench.txt" || status=1
            python3 benchmarks/gpu/torch_train.py models/llama-50m.json --batch 16 --length 1024 --out "$out/train-bench-torch-$round.json" 2>/dev/null | tee -a "$out/train-bench.txt" || status=1
        done
        "$k" cuda train-bench --shape llama-50m --batch 16 --length 1024 --recompute-activations | tee -a "$out/train-bench.txt" || status=1
        "$k" cuda train-bench --shape llama-50m --batch 16 --length 1024 --kept-attention | tee -a "$out/train-bench.txt" || status=1
    fi
    exit $status
    ;;
rag)
    # Parts (default all): check demo qa bench serve draw
    out="${2:?output directory}"
    shift 2
    parts="${*:-check demo qa bench serve draw}"
    unpack "$out"
    status=0
    if [[ " $parts " == *" check "* ]]; then
        # Every RAG mode through RagEngine on the GPU against the CPU (plus the step parity of cuda check).
        "$k" cuda check -m tests/fixtures/stories260K/stories260K.bin --weights F32 --kv-type F32 -n 64 | tee -a "$out/rag-check.txt" || status=1
        "$k" cuda check -m tests/fixtures/stories260K/stories260K.bin --weights F32 --kv-type F16 -n 64 | tee -a "$out/rag-check.txt" || status=1
        # Head dim 64 with an f16 cache: the tensor-core prefill, its context split among blocks for the 40-token query.
        "$k" cuda check --shape qwen2.5-0.5b --weights F32 --kv-type F16 -n 16 | tee -a "$out/rag-check.txt" || status=1
    fi
    if [[ " $parts " == *" demo "* ]]; then
        # The README's main command on the GPU: packets ingested into a store, read back into device blocks, every mode.
        "$k" demo --device cuda --model models/kvqa-17m --questions 8 | tee -a "$out/demo-cuda.txt" || status=1
    fi
    if [[ " $parts " == *" qa "* ]]; then
        # The QA table's modes on the GPU: F1 and TTFT per mode (QA_REASONING=1 for the shipped revision 4, whose answers name
        # each hop; QA_CORPUS: more corpus options, e.g. "--min-documents 16 --max-documents 20" for the harder test;
        # QA_NAME: a suffix for the output files, so several splits can run in one call; QA_MODES, QA_ADAPTERS: other modes
        # and adapter files).
        "$k" corpus --out /tmp/qa --train 1 --test 2000 ${QA_REASONING:+--reasoning} ${QA_CORPUS:-} >/dev/null
        "$k" eval --task qa -m models/kvqa-17m --split /tmp/qa/test.jsonl --limit ${QA_EVAL:-1000} --device cuda \
            --modes ${QA_MODES:-full,closed-book,naive,epic,cacheblend,kvpacket,kvlink} \
            --adapter ${QA_ADAPTERS:-models/kvqa-17m/kvpacket-adapter.safetensors,models/kvqa-17m/kvlink-adapter.safetensors} \
            --out "$out/eval-qa-kvqa-17m-cuda${QA_NAME:+-$QA_NAME}.json" --plot "$out/qa-kvqa-17m-f1-vs-ttft-cuda${QA_NAME:+-$QA_NAME}.svg" \
            | tee -a "$out/qa-eval-cuda${QA_NAME:+-$QA_NAME}.txt" || status=1
    fi
    if [[ " $parts " == *" bench "* ]]; then
        # One request of 8 × 512-token documents and a 32-token query in every mode, Llama-3.2-1B shape, bf16 / f16.
        "$k" cuda rag --shape llama-3.2-1b --weights BF16 --kv-type F16 --out "$out" | tee -a "$out/rag-bench.txt" || status=1
    fi
    if [[ " $parts " == *" serve "* ]]; then
        # kvpacketd on the GPU, streamed over its Unix socket: 8 × 512-token packets and a 32-token query per request.
        "$k" bench serve --shape llama-3.2-1b --device cuda --documents 8 --document-tokens 512 --prompt-tokens 32 --max-tokens 32 \
            --concurrency ${SERVE_CONCURRENCY:-1,16,64} --requests ${SERVE_REQUESTS:-32} ${SERVE_SAMPLED:+--sampled} --out "$out" 2>&1 | tee -a "$out/serve-bench.txt" || status=1
    fi
    if [[ " $parts " == *" draw "* ]]; then
        # Token draws on the GPU against the host rule (token for token, as a distribution), timed beside PyTorch's.
        "$k" cuda draw --out "$out" | tee -a "$out/draw.txt" || status=1
        python3 benchmarks/gpu/torch_sampling.py | tee -a "$out/draw.txt" || status=1
    fi
    exit $status
    ;;
*)
    echo "usage: $0 publish | run OUTDIR [stories260K.bin] | train OUTDIR [check|adapter|pretrain|finetune|distill|speed|qa…] | rag OUTDIR [check|demo|qa|bench|serve|draw] | ilgpu OUTDIR | tokenizers OUTDIR" >&2
    exit 2
    ;;
esac
