#!/usr/bin/env bash
# gen train under torchrun on a machine with NVIDIA GPUs, where torch, onnx, onnxscript,
# onnxruntime, pluggy, click, safetensors and tqdm are installed but gen is not.
# nanoGPT's GPU recipe for Tiny Shakespeare (bf16 autocast, torch.compile), trained
#   1. in one plain process (batch 64), and
#   2. under torchrun, one process per GPU, with the same global batch (64 / NPROC each),
# each timed and scored exactly with `gen eval`; then the torchrun checkpoint is
# sampled, exported and run with the GPUs hidden, as on a CPU-only machine.
# The RESULT lines go into benchmarks/RESULTS.md. About 4 to 5 minutes on one H100 (an estimate
# from cuda_check.sh's 137 s for 5,000 steps; checked end to end on the CPU only, DEVICE=cpu).
#
#   bash benchmarks/cuda_distributed_check.sh CORPUS [OUTDIR]
#   (environment: ITERS=2000 steps, NPROC=the number of GPUs, PLAIN=0 skips run 1;
#    a smoke test without a GPU: DEVICE=cpu ITERS=2 EVAL_ITERS=1)
set -euo pipefail
corpus=${1:?usage: cuda_distributed_check.sh CORPUS [OUTDIR]}
out=${2:-/tmp/gen-cuda-distributed}
iters=${ITERS:-2000}
eval_iters=${EVAL_ITERS:-100}
device=${DEVICE:-cuda}
source "$(dirname "$0")/gen_from_source.sh"  # gen and GEN_MAIN, without installing gen
if [ "$device" = cuda ]; then
  nproc=${NPROC:-$(python3 -c 'import torch; print(torch.cuda.device_count())')}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  nproc=${NPROC:-2}
fi
if (( nproc < 1 || 64 % nproc != 0 )); then echo "NPROC=$nproc must divide the recipe's batch of 64"; exit 1; fi
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))'
rm -rf "$out"; mkdir -p "$out"

# nanoGPT's config/train_shakespeare_char.py: 6 layers, 6 heads, 384 wide, block 256, dropout 0.2
recipe=(--data "$corpus" --device "$device" --compile --dtype bfloat16 --n-layer 6 --n-head 6 --n-embd 384
        --block-size 256 --dropout 0.2 --lr 1e-3 --min-lr 1e-4 --warmup-iters 100 --beta2 0.99
        --max-iters "$iters" --eval-interval 500 --eval-iters "$eval_iters" --seed 1337)
quiet() { tr '\r' '\n' | grep -v '^\s*$' | grep -vE 'it/s|s/it|Profiler record function' || true; }

# train NAME COMMAND...: run it, then print its wall time and the exact loss of its best/
train() {
  local name=$1; shift
  echo "== $name: $*"
  local start; start=$(date +%s%N)
  "$@" --out "$out/$name" 2>&1 | quiet
  local wall=$(( ($(date +%s%N) - start) / 1000000 ))
  local loss; loss=$(gen eval --checkpoint "$out/$name" --device "$device" --json |
    python3 -c 'import json, sys; print("%.4f" % json.load(sys.stdin)["loss"])')
  local best; best=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$out/$name/best/config.json")
  echo "RESULT $name: $iters steps in $((wall / 1000)).$((wall % 1000 / 100)) s (start to finish), exact val loss $loss (best/, step $best)"
}

if [ "${PLAIN:-1}" != 0 ]; then
  train one-process gen train "${recipe[@]}" --batch-size 64
fi
train "torchrun-$nproc" python3 -m torch.distributed.run --standalone --nproc_per_node "$nproc" "$GEN_MAIN" \
  train "${recipe[@]}" --batch-size $((64 / nproc))
python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); print("world_size in config.json:", c["world_size"])' \
  "$out/torchrun-$nproc/latest/config.json"

echo "== the torchrun checkpoint with the GPUs hidden: sample, export, run (greedy: same text expected)"
export CUDA_VISIBLE_DEVICES=""
gen sample --checkpoint "$out/torchrun-$nproc" --device cpu --prompt "ROMEO:" --sampler greedy --max-new-tokens 200 --seed 1 > "$out/sample_cpu.txt"
head -c 300 "$out/sample_cpu.txt"; echo
gen export "$out/model.onnx" --checkpoint "$out/torchrun-$nproc"
gen run "$out/model.onnx" --prompt "ROMEO:" --sampler greedy --max-new-tokens 200 --seed 1 > "$out/run_cpu.txt"
cmp -s "$out/run_cpu.txt" "$out/sample_cpu.txt" && echo "RESULT CPU-only: sample, export and run work; onnxruntime == torch greedy text" \
  || echo "RESULT CPU-only: onnxruntime and torch greedy texts differ"
