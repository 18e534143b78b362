"""Speed at GPT-2 small's shape and vocabulary: 12 layers, 12 heads, 768 wide, 1,024 positions,
50,257 tokens (issue 21, "large vocabularies at speed"). Random weights: speed does not depend on them.

    .venv/bin/python benchmarks/large_vocab.py [--work DIR] [--threads 1 2] [--rounds 2] [--new-tokens 32]

What it builds (once; kept in --work when given, so a second run measures at once):
- a byte-level BPE tokenizer.json of 50,257 tokens: merges learned from --data (the in-repo excerpt
  by default) with the `tokenizers` package, then further merges of existing tokens until the
  vocabulary has GPT-2's size, and `<|endoftext|>`;
- a random `transformers` GPT2LMHeadModel of GPT-2 small's configuration, saved with
  save_pretrained beside that tokenizer, and brought into gen with `gen import hf`;
- `gen export` of it in fp32, int8 and int4.

What it prints, for each number of threads, the measurements interleaved over --rounds rounds
(each figure the best round: other processes on a shared machine only slow runs down), with the
load average beside each table:
- `gen run` at batch 1 with `top_k:k=40 temperature:t=0.8`, a fresh process: its tokens/s (from
  --stats), its load time (start to exit, less the generation) and its peak memory (the child's
  ru_maxrss);
- the Python API (the generation loop OnnxModel.generate runs, on an OnnxModel) at batch 1 and 8,
  greedy and `top_k:k=40 temperature:t=0.8`, and the sampling side's share of the step: the time
  spent in the sampler chain over the whole time (target: <= 10%);
- Hugging Face transformers' generate (torch, with its cache, greedy) on the same weights at
  batch 1 and 8, and Optimum's ORTModelForCausalLM where installed (else the reason it is not).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gen.core.generation import generate_text
from gen.core.sampling import build_sampler_chain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_baselines import optimum_generate, transformers_generate  # noqa: E402 (benchmarks/ is not a package)

REPOSITORY = Path(__file__).resolve().parent.parent
EXCERPT = REPOSITORY / "tests" / "data" / "tinyshakespeare-excerpt.txt"
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50_257)
QUANTIZATIONS = ("fp32", "int8", "int4")
SAMPLERS = {"greedy": ("greedy",), "top_k:k=40 temperature:t=0.8": ("top_k:k=40", "temperature:t=0.8")}
GEN_RUN_SAMPLER = SAMPLERS["top_k:k=40 temperature:t=0.8"]
PROMPT = "ROMEO:"
HF_PROMPT_IDS = [1, 1]  # transformers and Optimum start from two ids of the BPE tokenizer
SAMPLING_SHARE_TARGET = 0.10


def load_average() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def gen_command() -> str:
    found = shutil.which("gen", path=str(Path(sys.executable).parent)) or shutil.which("gen")
    if found is None:
        sys.exit("the gen command is not installed in this environment (make install)")
    return found


# --- building the model ---------------------------------------------------------------------


def build_tokenizer(corpus: str, vocab_size: int) -> dict:
    """A GPT-2-style byte-level BPE tokenizer.json with exactly `vocab_size` tokens: the merges the
    corpus supports, then merges of existing tokens (seeded) until the vocabulary is full."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([corpus], trainer)
    document = json.loads(tokenizer.to_str())
    vocabulary, merges = document["model"]["vocab"], document["model"]["merges"]
    tokens = [token for token in vocabulary if token != "<|endoftext|>"]
    rng = random.Random(0)
    while len(vocabulary) < vocab_size:
        left, right = rng.choice(tokens), rng.choice(tokens)
        if left + right not in vocabulary and len(left + right) <= 16:
            vocabulary[left + right] = len(vocabulary)
            merges.append([left, right])
            tokens.append(left + right)
    return document


def build(work: Path, data: str | None) -> dict[str, Path]:
    """The three exports (and the transformers folder), built unless --work holds them already."""
    folder, checkpoint = work / "gpt2-small-random", work / "checkpoint"
    exports = {name: work / f"gpt2-small-{name}.onnx" for name in QUANTIZATIONS}
    if not (folder / "config.json").exists():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        print(f"building a random GPT-2 small and its 50,257-token tokenizer in {folder} ...", flush=True)
        corpus = Path(data or EXCERPT).read_text(encoding="utf-8")
        document = build_tokenizer(corpus, GPT2_SMALL["vocab_size"])
        torch.manual_seed(0)
        # The exact GELU: gen's gpt computes it, and `gen import hf` refuses GPT-2's tanh approximation
        # ("gelu_new") rather than change the model; the speed is the same.
        model = GPT2LMHeadModel(GPT2Config(**GPT2_SMALL, activation_function="gelu", bos_token_id=0,
                                           eos_token_id=0)).eval()
        model.save_pretrained(folder)
        (folder / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
        del model
    gen = gen_command()
    if not (checkpoint / "config.json").exists():
        subprocess.run([gen, "import", "hf", str(folder), "--out", str(checkpoint), "--overwrite"], check=True)
    for name, path in exports.items():
        if not path.exists():
            started = time.perf_counter()
            quantize = [] if name == "fp32" else ["--quantize", name]
            subprocess.run([gen, "export", str(path), "--checkpoint", str(checkpoint), "--no-verify", *quantize],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"  gen export {name}: {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1e6:,.0f} MB",
                  flush=True)
    return {"folder": folder, **exports}


# --- gen run, a fresh process ------------------------------------------------------------------


# The child is started from this small Python, not from the benchmark itself: a process started
# from a large one inherits its peak resident memory (Linux records the parent's at exec).
PEAK_MEMORY_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
                       "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
                       "print('peak-rss-kib', peak, file=sys.stderr); sys.exit(code)")


def run_child(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak resident memory (bytes) and standard error of one child process."""
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", PEAK_MEMORY_WRAPPER, *command], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if completed.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr}")
    peak_kib = int(re.search(r"peak-rss-kib (\d+)", completed.stderr).group(1))  # ru_maxrss is in KiB on Linux
    return wall, peak_kib * 1024, completed.stderr


def gen_run(model: Path, specs: tuple[str, ...], threads: int, new_tokens: int) -> dict:
    """`gen run` at batch 1, one fresh process: tokens/s of its generation (from --stats), its load
    time (start to exit, less the generation) and its peak memory."""
    command = [gen_command(), "run", str(model), "--prompt", PROMPT, "--seed", "0", "--threads", str(threads),
               "--max-new-tokens", str(new_tokens), "--stats"]
    command += [argument for spec in specs for argument in ("--sampler", spec)]
    wall, peak, stderr = run_child(command)
    stats = re.search(r"([\d,]+) tokens in ([\d.]+) s, ([\d,.]+) tokens/s", stderr)
    generation_seconds = float(stats.group(2))
    return {"tokens/s": float(stats.group(3).replace(",", "")), "load s": wall - generation_seconds,
            "peak MB": peak / 1e6}


# --- the Python API at batch 8 -------------------------------------------------------------------


class TimedChain:
    """A sampler chain that adds up the time spent inside it (the sampling side of each step)."""

    def __init__(self, chain):
        self.chain = chain
        self.seconds = 0.0

    def __getattr__(self, name):  # wants_context, drawn_from, row_wise: the chain's own
        return getattr(self.chain, name)

    def __call__(self, *arguments):
        started = time.perf_counter()
        try:
            return self.chain(*arguments)
        finally:
            self.seconds += time.perf_counter() - started


def api_batch(backend, specs: tuple[str, ...], batch: int, new_tokens: int) -> dict:
    """tokens/s of OnnxModel's generation loop at `batch` prompts, and the sampling side's share."""
    chain = TimedChain(build_sampler_chain(list(specs)))
    started = time.perf_counter()
    for _ in generate_text(backend, backend.tokenizer, [PROMPT] * batch, chain, np.random.default_rng(0), new_tokens):
        pass
    seconds = time.perf_counter() - started
    return {"tokens/s": batch * new_tokens / seconds, "sampling share": chain.seconds / seconds}


# --- the tables ------------------------------------------------------------------------------------


def best(results: list[dict]) -> dict:
    """The best round of each figure: the highest tokens/s; the lowest load time, memory, share."""
    merged = {}
    for key in results[0]:
        values = [result[key] for result in results]
        merged[key] = max(values) if key == "tokens/s" else min(values)
    return merged


def measure(paths: dict[str, Path], threads: int, rounds: int, new_tokens: int, batch: int) -> None:
    from gen.runtime.onnx_model import OnnxModel

    backends = {name: OnnxModel(paths[name], threads=threads) for name in QUANTIZATIONS}
    runs: dict[tuple, list] = {}
    others: dict[tuple, list] = {}
    caches = {"transformers": {}, "optimum": {}}
    load_before = load_average()
    for round_number in range(rounds):
        for name in QUANTIZATIONS:  # interleaved: every measurement once per round
            runs.setdefault(("gen run", name), []).append(gen_run(paths[name], GEN_RUN_SAMPLER, threads, new_tokens))
            for sampler, specs in SAMPLERS.items():
                for size in (1, batch):
                    runs.setdefault(("API", name, sampler, size), []).append(
                        api_batch(backends[name], specs, size, new_tokens))
        for label, function in (("transformers generate", transformers_generate),
                                ("Optimum ORTModelForCausalLM", optimum_generate)):
            for size in (1, batch):
                key = (label, size)
                outcome = function(paths["folder"], threads, HF_PROMPT_IDS, size, new_tokens,
                                   caches[label.split()[0].lower()])
                others.setdefault(key, []).append(outcome)
        print(f"  round {round_number + 1} of {rounds} done ({load_average()})", flush=True)
    print(f"\n== {threads} thread(s); {new_tokens} new tokens after {PROMPT!r}; best of {rounds} interleaved "
          f"rounds; {load_before} before, {load_average()} after")
    print(f"gen run, batch 1, --sampler {' --sampler '.join(GEN_RUN_SAMPLER)}:")
    print(f"  {'':<8}{'tokens/s':>10}{'load s':>9}{'peak MB':>9}")
    for name in QUANTIZATIONS:
        run = best(runs[("gen run", name)])
        print(f"  {name:<8}{run['tokens/s']:>10,.1f}{run['load s']:>9.2f}{run['peak MB']:>9,.0f}")
    print(f"Python API (OnnxModel's generation loop); the sampling share of the step is the time in the sampler "
          f"chain over the whole (target <= {SAMPLING_SHARE_TARGET:.0%}):")
    print(f"  {'':<8}{'sampler':<32}{'batch 1 tok/s':>14}{'share':>8}{f'batch {batch} tok/s':>15}{'share':>8}")
    for name in QUANTIZATIONS:
        for sampler in SAMPLERS:
            one, many = best(runs[("API", name, sampler, 1)]), best(runs[("API", name, sampler, batch)])
            missed = [size for size, api in ((1, one), (batch, many)) if api["sampling share"] > SAMPLING_SHARE_TARGET]
            verdict = "" if not missed else f"  MISS at batch {' and '.join(map(str, missed))}"
            print(f"  {name:<8}{sampler:<32}{one['tokens/s']:>14,.1f}{one['sampling share']:>8.1%}"
                  f"{many['tokens/s']:>15,.1f}{many['sampling share']:>8.1%}{verdict}")
    for (label, size), outcomes in others.items():
        if isinstance(outcomes[0], str):
            print(f"{label} batch {size}: skipped, {outcomes[0]}")
        else:
            tokens_per_second = max(outcome["tokens/s"] for outcome in outcomes)
            print(f"{label} batch {size} (greedy, fp32): {tokens_per_second:,.1f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="a folder for the model and its exports, kept (default: a temporary one)")
    parser.add_argument("--data", help="the corpus the tokenizer's merges are learned from (default: the excerpt)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="the Python API's batch size")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gen-large-vocab-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"GPT-2 small shape {GPT2_SMALL}; {load_average()}", flush=True)
    try:
        paths = build(work, args.data)
        for threads in args.threads:
            measure(paths, threads, args.rounds, args.new_tokens, args.batch)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
