"""The model step of this tree against another commit's, in one process, interleaved.

    .venv/bin/python benchmarks/step_before_after.py [--before main] [--shapes quick big] [--static-cache]

`--before REF`'s runtime/onnx_model.py (read with `git show`) is loaded as a module beside
this tree's gen.runtime.onnx_model; both run the same export of a random-weight gpt
(Tiny Shakespeare's characters, seed 0) through gen's generation loop, greedy, inside one
window, at batch 1 and 32, in interleaved rounds (each round runs both, so a busy machine
slows them alike). Prints the best of the rounds, the ratio and the load average.
Everything else (the loop, the samplers, the export) is this tree's, so the figures
compare only the step's code.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gen.core.data import corpus_path, read_text
from gen.core.generation import generate_ids
from gen.core.sampling import build_sampler_chain
from gen.core.tokenizer import tokenizer_to_dict
from gen.export.onnx_export import ExportOptions, export_model
from gen.plugins.gpt import GPT
from gen.plugins.tokenizers import CharTokenizer
from gen.runtime.onnx_model import OnnxModel

SHAPES = {
    "quick": dict(block_size=64, n_layer=4, n_head=4, n_embd=128),
    "big": dict(block_size=256, n_layer=6, n_head=6, n_embd=384),
}
REPOSITORY = Path(__file__).resolve().parent.parent


def onnx_model_at(ref: str, folder: Path):
    """The OnnxModel class of runtime/onnx_model.py at git commit `ref`."""
    source = subprocess.run(["git", "-C", str(REPOSITORY), "show", f"{ref}:runtime/onnx_model.py"],
                            capture_output=True, text=True, check=True).stdout
    path = folder / "onnx_model_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("onnx_model_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OnnxModel


def tokens_per_second(model, rows: int, count: int, generations: int) -> float:
    start = time.perf_counter()
    for _ in range(generations):
        for _ in generate_ids(model, [[0]] * rows, build_sampler_chain(["greedy"]), None, count):
            pass
    return rows * count * generations / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="main", help="the git commit whose step is 'before'")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["quick", "big"])
    parser.add_argument("--static-cache", action="store_true", help="export with the fixed-capacity cache")
    parser.add_argument("--data", default="shakespeare", help="the corpus whose characters the model uses")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tokenizer = CharTokenizer.train(read_text(corpus_path(args.data)))
    with tempfile.TemporaryDirectory(prefix="gen-step-before-after-") as work:
        Before = onnx_model_at(args.before, Path(work))
        for shape in args.shapes:
            torch.manual_seed(0)
            model = GPT.from_config(dict(SHAPES[shape], vocab_size=tokenizer.vocab_size)).eval()
            path = Path(work) / f"{shape}.onnx"
            export_model(model, path, tokenizer_document=tokenizer_to_dict("char", tokenizer), model_name="gpt",
                         options=ExportOptions(progress=None, verify=False, static_cache=args.static_cache))
            models = {"before": Before(path), "after": OnnxModel(path)}
            count = SHAPES[shape]["block_size"] - 1
            for rows in (1, 32):
                generations = max(1, 600 // count) if rows == 1 else 1
                speeds = {name: [] for name in models}
                loads = []
                for _ in range(args.rounds):
                    loads.append(os.getloadavg()[0])
                    for name, generator in models.items():
                        speeds[name].append(tokens_per_second(generator, rows, count, generations))
                before, after = max(speeds["before"]), max(speeds["after"])
                print(f"{shape} batch {rows}{', static cache' if args.static_cache else ''}: {args.before} {before:,.0f}, "
                      f"this tree {after:,.0f} tokens/s ({after / before:.2f}x), best of {args.rounds} interleaved; "
                      f"load {min(loads):.1f}-{max(loads):.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
