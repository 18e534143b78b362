"""Where quantized weights' time goes, and what each choice costs in validation loss.

    .venv/bin/python benchmarks/quantized_weights.py --checkpoint RUN [--rounds 3] [--tokens 600]

One trained gpt checkpoint (its validation split is scored, so train it first; the loss
of random weights says nothing), exported once as gen's fused graph with the
fixed-capacity cache (`gen export --static-cache`), then its MatMul weights written as:
- fp32 (as exported);
- int8 dynamic (onnxruntime's quantize_dynamic: what `gen export --quantize int8` writes);
- int8 weight-only (MatMulNBits, 8 bits, blocks of 32, int8 activations: accuracy level 4);
- int4 weight-only (MatMulNBits, 4 bits, accuracy level 4) in blocks of 16, 32, 64 and
  128 (what `--quantize int4` writes, gen.export.quantize.INT4_BLOCK_SIZE);
- fp16 weights, where onnxruntime's CPU kernels take them (otherwise the reason).
For each, in interleaved rounds on one thread: greedy tokens/s at batch 1 and at batch 32
inside one window, a prefill of half a window (what `gen run` does each time the window
slides: the suspect for int4 over long runs) and the exact validation loss
(gen.core.scoring.exact_loss over the first VALIDATION_TOKENS of the split, as `gen export
--quantize` reports it) with its change from fp32. The load average is printed beside the
figures: compare rows only within one run.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from gen.core.generation import generate_ids
from gen.core.sampling import build_sampler_chain
from gen.core.scoring import exact_loss
from gen.export.quantize import VALIDATION_TOKENS, _quantize_weights, matmul_nbits, validation_ids_of
from gen.runtime.onnx_model import OnnxModel


def float16_weights(fp32: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_model(str(fp32)), keep_io_types=True)
    onnx.save_model(model, str(out), save_as_external_data=False)


def variants(fp32: Path, work: Path) -> dict[str, Path | str]:
    """name -> the file, or why it could not be made or loaded."""
    writers = {
        "fp32": None,
        "int8 dynamic": lambda out: _quantize_weights(fp32, out, "int8"),
        "int8 weight-only, blocks of 32": lambda out: matmul_nbits(onnx.load_model(str(fp32)), out, 8, 32),
        **{f"int4, blocks of {size}": (lambda out, size=size: matmul_nbits(onnx.load_model(str(fp32)), out, 4, size))
           for size in (16, 32, 64, 128)},
        "fp16 weights": lambda out: float16_weights(fp32, out),
    }
    files: dict[str, Path | str] = {}
    for name, write in writers.items():
        if write is None:
            files[name] = fp32
            continue
        out = work / (name.replace(" ", "_").replace(",", "") + ".onnx")
        try:
            write(out)
            OnnxModel(out)  # onnxruntime must load it and take a step
            files[name] = out
        except Exception as error:  # onnxruntime's and the quantizers' own exception types
            files[name] = f"not taken: {str(error).strip().splitlines()[0][:160]}"
    return files


def greedy_tokens_per_second(model: OnnxModel, rows: int, count: int, generations: int) -> float:
    sampler = build_sampler_chain(["greedy"])
    start = time.perf_counter()
    for _ in range(generations):
        for _ in generate_ids(model, [[0]] * rows, sampler, None, count):
            pass
    return rows * count * generations / (time.perf_counter() - start)


def prefill_seconds(model: OnnxModel, length: int) -> float:
    ids = np.zeros((1, length), dtype=np.int64)
    start = time.perf_counter()
    model.step(ids, np.ones_like(ids), None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained gpt checkpoint or run directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=600, help="about this many tokens per batch-1 measurement")
    args = parser.parse_args()
    from gen.core.training.checkpoint import load_checkpoint
    from gen.export.onnx_export import ExportOptions, export_model

    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log every node they touch
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    ids, source = validation_ids_of(loaded)
    if ids is None:
        sys.exit(f"no validation data: {source}")
    work = Path(tempfile.mkdtemp(prefix="gen-quantized-weights-"))
    try:
        fp32 = work / "fp32.onnx"
        export_model(loaded.model, fp32, tokenizer_document=loaded.tokenizer_document, model_name=loaded.model_name,
                     options=ExportOptions(progress=None, verify=False, static_cache=True))
        files = variants(fp32, work)
        models = {name: OnnxModel(path) for name, path in files.items() if isinstance(path, Path)}
        block = loaded.model_config["block_size"]
        count = block - 1  # inside one window: decode steps only
        generations = max(1, args.tokens // count)
        speeds = {name: {"batch 1": [], "batch 32": [], "prefill": []} for name in models}
        loads = []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, model in models.items():
                speeds[name]["batch 1"].append(greedy_tokens_per_second(model, 1, count, generations))
                speeds[name]["batch 32"].append(greedy_tokens_per_second(model, 32, count, 1))
                speeds[name]["prefill"].append(min(prefill_seconds(model, block // 2) for _ in range(5)))
        print(f"{loaded.model_name} {loaded.model_config}; {len(ids[:VALIDATION_TOKENS]):,} validation tokens of "
              f"{source}; {args.rounds} interleaved rounds, best of each; load average {min(loads):.1f}-"
              f"{max(loads):.1f}")
        header = (f"{'weights':<32}{'MB':>6}{'batch 1 tok/s':>15}{'batch 32 tok/s':>16}"
                  f"{f'prefill {block // 2} ms':>15}{'val loss':>10}{'change':>9}")
        print(header + "\n" + "-" * len(header))
        fp32_loss = None
        for name, path in files.items():
            if not isinstance(path, Path):
                print(f"{name:<32}{path}")
                continue
            loss, _ = exact_loss(models[name].logits, ids[:VALIDATION_TOKENS], block)
            fp32_loss = loss if fp32_loss is None else fp32_loss
            figures = speeds[name]
            print(f"{name:<32}{path.stat().st_size / 1e6:>6.2f}{max(figures['batch 1']):>15,.0f}"
                  f"{max(figures['batch 32']):>16,.0f}{min(figures['prefill']) * 1e3:>15.2f}"
                  f"{loss:>10.4f}{loss - fp32_loss:>+9.4f}")
        print(f"(load average now {os.getloadavg()[0]:.1f}; median batch-1 spread over rounds: "
              + ", ".join(f"{name} {statistics.median(v['batch 1']):,.0f}" for name, v in speeds.items()) + ")")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
