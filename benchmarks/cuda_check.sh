#!/usr/bin/env bash
# A short check of gen on a machine with an NVIDIA GPU, where torch, onnx, onnxscript,
# onnxruntime, pluggy, click, safetensors and tqdm are installed but gen is not:
# train nanoGPT's GPU recipe for Tiny Shakespeare on cuda (bf16 autocast, torch.compile),
# score it exactly, sample on cuda and on the CPU, export it and run the export with
# onnxruntime (CPU, and the CUDA execution provider where this onnxruntime has it).
#
#   bash benchmarks/cuda_check.sh CORPUS [OUTDIR]    (ITERS=5000 by default)
set -euo pipefail
corpus=${1:?usage: cuda_check.sh CORPUS [OUTDIR]}
out=${2:-/tmp/gen-cuda-check}
iters=${ITERS:-5000}
mkdir -p "$out"

source "$(dirname "$0")/gen_from_source.sh"  # gen without installing it

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, onnxruntime as ort; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0)); print("onnxruntime", ort.__version__, ort.get_available_providers())'

echo "== train: nanoGPT's GPU recipe (6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2), $iters steps"
start=$(date +%s)
gen train --data "$corpus" --out "$out/run" --device cuda --compile --dtype bfloat16 \
  --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --batch-size 64 --dropout 0.2 \
  --lr 1e-3 --min-lr 1e-4 --warmup-iters 100 --beta2 0.99 --max-iters "$iters" \
  --eval-interval 500 --eval-iters 100 --seed 1337 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | grep -vE 'it/s|s/it' || true
echo "train wall: $(( $(date +%s) - start )) s"
test -f "$out/run/best/config.json"

echo "== exact validation loss (cuda)"
gen eval --checkpoint "$out/run" --device cuda
echo "== sample on cuda and on the CPU (same seed: same text expected)"
gen sample --checkpoint "$out/run" --device cuda --prompt "ROMEO:" --sampler greedy --max-new-tokens 300 --seed 1 > "$out/sample_cuda.txt"
gen sample --checkpoint "$out/run" --device cpu --prompt "ROMEO:" --sampler greedy --max-new-tokens 300 --seed 1 > "$out/sample_cpu.txt"
head -c 400 "$out/sample_cuda.txt"; echo
cmp -s "$out/sample_cuda.txt" "$out/sample_cpu.txt" && echo "cuda == cpu greedy text" || echo "cuda and cpu greedy texts differ (float rounding can flip a near tie)"

echo "== export and run with onnxruntime"
gen export "$out/model.onnx" --checkpoint "$out/run"
gen run "$out/model.onnx" --prompt "ROMEO:" --sampler greedy --max-new-tokens 300 --seed 1 > "$out/run_cpu.txt"
cmp -s "$out/run_cpu.txt" "$out/sample_cpu.txt" && echo "onnxruntime == torch greedy text" || echo "onnxruntime and torch greedy texts differ"
gen eval "$out/model.onnx" --data "$corpus"
echo "== onnxruntime CUDA execution provider"
gen run "$out/model.onnx" --provider cuda --prompt "ROMEO:" --sampler greedy --max-new-tokens 300 --seed 1 || echo "(no CUDA execution provider in this onnxruntime)"
