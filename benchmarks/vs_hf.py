"""gen beside Hugging Face transformers and Optimum on the same weights: greedy, one thread, batch 1 and 32,
interleaved rounds (issue 25: "batch 32 on both shapes: ahead of Optimum and transformers").

    PYTHONPATH=/path/to/optimum-site .venv/bin/python benchmarks/vs_hf.py [--shapes quick big] [--rounds 3]
        [--threads 1] [--data FILE] [--train-steps 20] [--tokens 600]

For each shape (quick: 4 layers, 4 heads, 128 wide, block 64; big: 6 layers, 6 heads, 384 wide, block
256; the character vocabulary of --data, 65 for the in-repo excerpt), one gen `gpt` model is trained for
--train-steps steps on --data by `gen train`, then written
- as a Hugging Face GPT-2 folder by `gen export --hf` (transformers loads it; Optimum exports it to
  ONNX itself, `ORTModelForCausalLM.from_pretrained(folder, export=True)`);
- as gen's ONNX export by `gen export`, in fp32, int8 and int4.
Then, in interleaved rounds (each round runs every system once at each batch size, so a busy machine
slows them alike), each system generates the greedy continuation of "\\n" to the end of one window
(block - 1 tokens: nothing slides): gen through its Python API (gen.runtime.OnnxModel and the generation
loop gen.core.generation.generate_ids, as benchmarks/vs_llamacpp.py runs it), transformers' generate
(torch, use_cache, do_sample=False) and Optimum's ORTModelForCausalLM (do_sample=False); at batch 1
repeated until about --tokens tokens per measurement, at batch 32 once (32 rows of the same prompt).
The table gives the best tokens/s over the rounds, gen's ratio to the faster of transformers and
Optimum at each batch size, and whether each system's greedy ids (batch 1) agree with transformers'.

Optimum (optimum-onnx) needs transformers<4.58, so it is not in gen's environment: install it beside it,
`pip install --target DIR optimum-onnx`, and run this script with PYTHONPATH=DIR (which also puts the
transformers it brought first on the path). Without it, the script says why and leaves Optimum out.

The machine may be shared: the 1-minute load average during the rounds is printed beside each table.
Compare rows only within one run.
"""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gen.core.generation import generate_ids
from gen.core.sampling import build_sampler_chain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_baselines import optimum_generate, transformers_generate  # noqa: E402 (benchmarks/ is not a package)
from vs_llamacpp import SHAPES, gen_command  # noqa: E402

EXCERPT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tinyshakespeare-excerpt.txt"
QUANTIZATIONS = ("fp32", "int8", "int4")
BATCHES = (1, 32)
HF_SYSTEMS = {"transformers generate": transformers_generate, "Optimum ORTModelForCausalLM": optimum_generate}
REFERENCE = "transformers generate"  # the greedy ids every system is checked against


def load_average() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def run_gen(*arguments: str) -> None:
    completed = subprocess.run([gen_command(), *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"gen {arguments[0]} failed: {completed.stderr.strip() or completed.stdout.strip()}")


def build(shape: str, data: Path, steps: int, work: Path) -> dict[str, Path]:
    """The checkpoint of `shape` after `steps` steps of `gen train`, its Hugging Face folder and its
    ONNX exports, by the name of the system that runs each."""
    config = SHAPES[shape]
    checkpoint = work / "checkpoint"
    started = time.perf_counter()
    run_gen("train", "--data", str(data), "--out", str(checkpoint), "--tokenizer", "char",
            "--block-size", str(config["block_size"]), "--n-layer", str(config["n_layer"]),
            "--n-head", str(config["n_head"]), "--n-embd", str(config["n_embd"]), "--max-iters", str(steps),
            "--eval-interval", str(steps), "--eval-iters", "2", "--batch-size", "8", "--seed", "0")
    files = {"hf": work / "hf"}
    run_gen("export", "--checkpoint", str(checkpoint), "--hf", str(files["hf"]))
    for name in QUANTIZATIONS:
        files[f"gen {name}"] = work / f"gen-{name}.onnx"
        quantize = [] if name == "fp32" else ["--quantize", name]
        run_gen("export", str(files[f"gen {name}"]), "--checkpoint", str(checkpoint), "--no-verify", *quantize)
    print(f"trained {steps} steps and exported to transformers and gen fp32/int8/int4 in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return files


class GenSystem:
    """gen's Python API on one ONNX export: OnnxModel under the generation loop, greedy."""

    def __init__(self, path: Path, threads: int):
        from gen.runtime.onnx_model import OnnxModel

        self.model = OnnxModel(path, threads=threads)

    def __call__(self, prompt: list[int], batch: int, new_tokens: int) -> dict:
        first_row = []
        started = time.perf_counter()
        for next_ids, _ in generate_ids(self.model, [prompt] * batch, build_sampler_chain(["greedy"]), None,
                                        new_tokens):
            first_row.append(int(next_ids[0]))
        seconds = time.perf_counter() - started
        return {"tokens/s": batch * new_tokens / seconds, "ids": first_row}


def measured(system, prompt: list[int], batch: int, new_tokens: int, tokens: int) -> dict | str:
    """One measurement: batch 1 repeated until about `tokens` tokens (a single short generation is
    too brief to time), a larger batch once; tokens/s over them all, and the first generation's ids."""
    repeats = max(1, tokens // new_tokens) if batch == 1 else 1
    outcomes = [system(prompt, batch, new_tokens) for _ in range(repeats)]
    if isinstance(outcomes[0], str):
        return outcomes[0]
    seconds = sum(batch * new_tokens / outcome["tokens/s"] for outcome in outcomes)
    return {"tokens/s": repeats * batch * new_tokens / seconds, "ids": outcomes[0]["ids"]}


def agreement(ids: list[int], reference: list[int]) -> str:
    first_difference = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), None)
    return "agree" if first_difference is None else f"differ from token {first_difference}"


def measure(shape: str, args, work: Path) -> list[str]:
    """Build and run one shape; return its table's lines."""
    print(f"\n== {shape}: {SHAPES[shape]}, {args.train_steps} steps of gen train on {args.data} ({load_average()})",
          flush=True)
    files = build(shape, Path(args.data), args.train_steps, work / shape)
    systems = {f"gen {name}": GenSystem(files[f"gen {name}"], args.threads) for name in QUANTIZATIONS}
    for label, function in HF_SYSTEMS.items():  # called as gen's: (prompt, batch, new_tokens)
        systems[label] = functools.partial(function, files["hf"], args.threads, cache={})
    prompt = systems["gen fp32"].model.tokenizer.encode("\n")
    new_tokens = SHAPES[shape]["block_size"] - len(prompt)  # the prompt and its continuation fill one window

    # A warm-up of each (Optimum exports its ONNX here), and the reason a system cannot run.
    skipped = {}
    for label, system in systems.items():
        outcome = system(prompt, 1, new_tokens)
        if isinstance(outcome, str):
            skipped[label] = outcome
    running = {label: system for label, system in systems.items() if label not in skipped}

    results: dict[tuple[str, int], list[dict]] = {}
    loads = []
    for round_number in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for batch in BATCHES:
            for label, system in running.items():
                results.setdefault((label, batch), []).append(
                    measured(system, prompt, batch, new_tokens, args.tokens))
        print(f"  round {round_number + 1} of {args.rounds} done ({load_average()})", flush=True)
    loads.append(os.getloadavg()[0])

    best = {key: max(outcome["tokens/s"] for outcome in outcomes) for key, outcomes in results.items()}
    reference_ids = results[(REFERENCE, 1)][0]["ids"] if REFERENCE in running else None
    hf_running = [label for label in HF_SYSTEMS if label in running]
    title = (f"{shape}, {args.threads} thread(s), greedy, {new_tokens} new tokens after \"\\n\"; best of {args.rounds} "
             f"interleaved rounds; 1-minute load average {min(loads):.2f}-{max(loads):.2f} during them")
    header = (f"{'tokens/s':<30}" + "".join(f"{f'batch {batch}':>10}{'vs HF':>8}" for batch in BATCHES)
              + f"   greedy ids vs {REFERENCE} (batch 1)")
    lines = [title, header, "-" * len(header)]
    for label in running:
        row = f"{label:<30}"
        for batch in BATCHES:
            fastest_hf = max((best[(other, batch)] for other in hf_running), default=None)
            versus = f"{best[(label, batch)] / fastest_hf:.2f}x" if label.startswith("gen") and fastest_hf else ""
            row += f"{best[(label, batch)]:>10,.0f}{versus:>8}"
        if reference_ids is not None and label != REFERENCE:
            row += f"   {agreement(results[(label, 1)][0]['ids'], reference_ids)}"
        lines.append(row)
    lines.append("vs HF: gen's tokens/s over the faster of " + " and ".join(hf_running) + " at that batch size"
                 if hf_running else "vs HF: neither transformers nor Optimum ran")
    lines += [f"{label}: skipped, {reason}" for label, reason in skipped.items()]
    print("\n" + "\n".join(lines), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["quick", "big"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=str(EXCERPT), help="a UTF-8 text file: the vocabulary and the training "
                                                             "text (default: the in-repo excerpt)")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of gen train on --data")
    parser.add_argument("--tokens", type=int, default=600, help="about this many tokens per batch-1 measurement")
    args = parser.parse_args()
    import onnxruntime
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, each time a model loads
    try:
        optimum = f"optimum-onnx {importlib.metadata.version('optimum-onnx')}"
    except importlib.metadata.PackageNotFoundError:
        optimum = "no optimum-onnx"
    print(f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
          f", {optimum}; {os.cpu_count()} CPUs; {load_average()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gen-vs-hf-"))
    try:
        lines = [line for shape in args.shapes for line in measure(shape, args, work) + [""]]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary:\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
