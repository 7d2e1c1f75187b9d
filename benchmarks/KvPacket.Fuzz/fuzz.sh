#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of untrusted bytes with AFL++ and SharpFuzz (Debian's afl++, and
# `dotnet tool install --global SharpFuzz.CommandLine`).
#   benchmarks/KvPacket.Fuzz/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]
# Work goes to /tmp/kvpacket-fuzz; each target's crashes and hangs are copied into tests/fixtures/fuzz/TARGET/, which a CI
# test replays (every input there must end in the reader's own format error, quickly). A summary table ends the output.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-240}"; shift || true
targets="${*:-llama2c safetensors gguf hf-config sentencepiece tokenizer-json tiktoken store-codecs request}"
work=/tmp/kvpacket-fuzz
rm -rf "$work"; mkdir -p "$work/out"
dotnet publish benchmarks/KvPacket.Fuzz -c Release -o "$work/bin" >/dev/null
dotnet "$work/bin/kvpacket-fuzz.dll" seeds "$work/seeds"   # before instrumenting: instrumented code runs only under afl-fuzz
# Instrument our assemblies only (the fuzzed readers); the harness and the framework stay as they are.
for dll in KvPacket.Core KvPacket.Store kvpacketd; do "${SHARPFUZZ:-$HOME/.dotnet/tools/sharpfuzz}" "$work/bin/$dll.dll" >/dev/null; done
cp "$work/seeds/tokenizer-json/seed-tiny" "$work/tokenizer.json"   # the request target parses text prompts and stops with it
export KVPACKET_FUZZ_TOKENIZER="$work/tokenizer.json" AFL_SKIP_BIN_CHECK=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1
cores=$(nproc)
run() {
    afl-fuzz -i "$work/seeds/$1" -o "$work/out/$1" -t 5000 -m none -V "$seconds" -- dotnet "$work/bin/kvpacket-fuzz.dll" "$1" > "$work/$1.log" 2>&1 || echo "$1: afl-fuzz exited $? (see $work/$1.log)"
}
set -- $targets
while (( $# )); do
    for (( i = 0; i < cores && $# > 0; i++ )); do run "$1" & shift; done
    wait
done
printf '%-16s %12s %10s %8s %8s %8s\n' target execs execs/s edges crashes hangs
for t in $targets; do
    stats="$work/out/$t/default/fuzzer_stats"
    [[ -f $stats ]] || { echo "$t: no stats"; continue; }
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    printf '%-16s %12s %10s %8s %8s %8s\n' "$t" "$(get execs_done)" "$(get execs_per_sec)" "$(get edges_found)" "$(get saved_crashes)" "$(get saved_hangs)"
    for kind in crashes hangs; do
        for f in "$work/out/$t/default/$kind"/id:*; do
            [[ -f $f ]] || continue
            mkdir -p "tests/fixtures/fuzz/$t"
            cp "$f" "tests/fixtures/fuzz/$t/$kind-$(sha1sum < "$f" | cut -c1-12)"
        done
    done
done
