"""Decode speed of gen's generators, side by side: torch without and with the KV cache,
onnxruntime fp32 and int8, at batch 1 and batch 32; the cost of the samplers (those
that look at the text so far against top_k alone) and mirostat's surprise; then
`gen run` start to finish.

    .venv/bin/python benchmarks/decode_speed.py [--checkpoint out] [--new-tokens 500] [--threads 1]

The model is nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64) with
random weights, or a checkpoint. Every generator runs the same shared loop
(gen.core.generate.generate_text: prompt "\\n", multinomial sampling, the same
context policy past block_size), so the numbers compare the model step and what
surrounds it, nothing else. Each figure is the best of --repeats runs after a
warm-up, because other processes on a small machine add noise that only slows runs
down. torch and onnxruntime get the same number of threads.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gen.core.generate import generate_text
from gen.core.sampling import build_sampler_chain
from gen.core.tokenizer import tokenizer_from_dict, tokenizer_to_dict
from gen.core.data import corpus_path, read_text
from gen.core.torch_backend import TorchBackend
from gen.export.onnx_export import export_model
from gen.plugins.gpt import GPT
from gen.plugins.tokenizers import CharTokenizer
from gen.runtime.generator import Generator

CPU_RECIPE = dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)

# The targets of issue 4.
TARGET_ORT_TOKENS_PER_SECOND = 3000
TARGET_ORT_OVER_TORCH_CACHE = 2.0
TARGET_BATCH_32_OVER_BATCH_1 = 8.0
TARGET_GEN_RUN_SECONDS = 1.5
# The target of issue 8.
TARGET_PENALTY_OVER_TOP_K = 0.8


def model_and_tokenizer_document(checkpoint: str | None, data: str):
    if checkpoint:
        from gen.core.checkpoint import load_checkpoint

        loaded = load_checkpoint(checkpoint, device="cpu")
        return loaded.model, loaded.model_name, loaded.tokenizer_document
    tokenizer = CharTokenizer.train(read_text(corpus_path(data)))
    torch.manual_seed(0)
    model = GPT.from_config(dict(CPU_RECIPE, vocab_size=tokenizer.vocab_size)).eval()
    return model, "gpt", tokenizer_to_dict("char", tokenizer)


def tokens_per_second(backend, tokenizer, batch: int, new_tokens: int, repeats: int,
                      specs: tuple[str, ...] = ("multinomial",)) -> float:
    """Best-of-`repeats` tokens/s of generating `new_tokens` for `batch` prompts."""
    prompts = ["\n"] * batch

    def once(count: int) -> float:
        rng = np.random.default_rng(0)
        sampler = build_sampler_chain(list(specs))  # fresh for every generation, as gen does
        start = time.perf_counter()
        for _ in generate_text(backend, tokenizer, prompts, sampler, rng, count):
            pass
        return time.perf_counter() - start

    once(20)  # warm-up: first-run allocations, lazy initialisation
    best = min(once(new_tokens) for _ in range(repeats))
    return batch * new_tokens / best


def mirostat_surprise(backend, tokenizer, new_tokens: int, tau: float = 3.0) -> str:
    """The mean surprise, in bits, of `new_tokens` drawn with mirostat:tau=TAU: under the
    distribution mirostat drew from (what it steers to tau) and under the model's."""
    from gen.runtime.generator import Generator

    if not isinstance(backend, Generator):
        return "mirostat surprise: needs the onnxruntime generator"
    tokens = list(backend.tokens("\n", sampler=f"mirostat:tau={tau}", seed=0, max_new_tokens=new_tokens, logprobs=0))
    drawn = -np.mean([token.sampled_logprob for token in tokens]) / np.log(2)
    model = -np.mean([token.logprob for token in tokens]) / np.log(2)
    return (f"mirostat:tau={tau} over {len(tokens)} tokens: mean surprise {drawn:.2f} bits under the distribution "
            f"it drew from ({drawn / tau - 1:+.1%} of tau), {model:.2f} bits under the model")


def time_gen_run(model_path: Path, new_tokens: int) -> tuple[str, float | None]:
    """Wall time of `gen run MODEL --max-new-tokens N` as a fresh process, start-up included."""
    gen = shutil.which("gen", path=str(Path(sys.executable).parent)) or shutil.which("gen")
    if gen is None:
        return "the gen command is not installed", None
    command = [gen, "run", str(model_path), "--max-new-tokens", str(new_tokens), "--seed", "0"]
    help_text = subprocess.run([gen, "--help"], capture_output=True, text=True).stdout
    if " run " not in help_text:
        return "`gen run` is not wired into the gen command yet", None
    subprocess.run(command, capture_output=True)  # warm the file cache once
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if completed.returncode != 0:
            return f"gen run failed: {completed.stderr.strip().splitlines()[-1]}", None
    return " ".join(command), min(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a checkpoint directory instead of the random-weight CPU recipe")
    parser.add_argument("--data", default="shakespeare",
                        help="the corpus whose characters the random-weight model uses (a path, or 'shakespeare')")
    parser.add_argument("--new-tokens", type=int, default=500)
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=[1, 32], metavar=("SMALL", "LARGE"))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-tokens", type=int, default=200, help="new tokens for the `gen run` timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, model_name, tokenizer_document = model_and_tokenizer_document(args.checkpoint, args.data)
    tokenizer = tokenizer_from_dict(tokenizer_document)
    config = model.config_dict()
    print(
        f"model: {model_name} {config.get('n_layer')} layers, {config.get('n_head')} heads, "
        f"{config.get('n_embd')} wide, block {config['block_size']}, vocab {config['vocab_size']}"
        f"{' (random weights)' if not args.checkpoint else ''}; {args.new_tokens} new tokens; "
        f"{args.threads} thread(s); torch {torch.__version__}; best of {args.repeats}"
    )
    work = Path(tempfile.mkdtemp(prefix="gen-decode-speed-"))
    try:
        fp32_path, int8_path = work / "model.onnx", work / "model.int8.onnx"
        print("exporting fp32 and int8 (verified against torch)...", flush=True)
        export_model(model, fp32_path, tokenizer_document=tokenizer_document, model_name=model_name, progress=None)
        export_model(
            model, int8_path, tokenizer_document=tokenizer_document, model_name=model_name,
            quantize="int8", verify=False, progress=None,
        )
        backends = {
            "gen torch, no cache": TorchBackend(model, device="cpu", use_cache=False),
            "gen torch, KV cache": TorchBackend(model, device="cpu", use_cache=True),
            "gen onnxruntime fp32": Generator(fp32_path, threads=args.threads),
            "gen onnxruntime int8": Generator(int8_path, threads=args.threads),
        }
        small, large = args.batch_sizes
        results = {}
        for name, backend in backends.items():
            results[name] = [
                tokens_per_second(backend, tokenizer, batch, args.new_tokens, args.repeats) for batch in (small, large)
            ]
            print(f"  measured {name}", flush=True)

        torch_cache = results["gen torch, KV cache"]
        print()
        header = f"{'tokens/s':<22}{f'batch {small}':>12}{'vs torch+cache':>16}{f'batch {large}':>12}{'vs torch+cache':>16}{f'{large} vs {small}':>10}"
        print(header)
        print("-" * len(header))
        for name, (at_small, at_large) in results.items():
            print(
                f"{name:<22}{at_small:>12,.0f}{at_small / torch_cache[0]:>15.2f}x{at_large:>12,.0f}"
                f"{at_large / torch_cache[1]:>15.2f}x{at_large / at_small:>9.1f}x"
            )

        ort_small, ort_large = results["gen onnxruntime fp32"]
        print()
        print(f"samplers on onnxruntime fp32 (tokens/s; the chains in one run, best of {args.repeats}):")
        chains = {
            "multinomial": ("multinomial",),
            "top_k:k=40": ("top_k:k=40",),
            "repetition_penalty:penalty=1.3 + top_k:k=40": ("repetition_penalty:penalty=1.3", "top_k:k=40"),
            "penalties:presence=0.5,frequency=0.5 + top_k:k=40": ("penalties:presence=0.5,frequency=0.5", "top_k:k=40"),
            "no_repeat_ngram:n=4 + top_k:k=40": ("no_repeat_ngram:n=4", "top_k:k=40"),
            "mirostat:tau=3.0": ("mirostat:tau=3.0",),
        }
        sampler_results = {
            name: [tokens_per_second(backends["gen onnxruntime fp32"], tokenizer, batch, args.new_tokens,
                                     args.repeats, specs) for batch in (small, large)]
            for name, specs in chains.items()
        }
        top_k = sampler_results["top_k:k=40"]
        for name, (at_small, at_large) in sampler_results.items():
            print(f"  {name:<50}{at_small:>10,.0f} ({at_small / top_k[0]:.2f}x top_k)"
                  f"{at_large:>10,.0f} ({at_large / top_k[1]:.2f}x top_k) at batch {small} / {large}")
        penalty = sampler_results["repetition_penalty:penalty=1.3 + top_k:k=40"]
        mirostat_line = mirostat_surprise(backends["gen onnxruntime fp32"], tokenizer, args.new_tokens)
        print(f"  {mirostat_line}")
        wall_description, wall = time_gen_run(fp32_path, args.run_tokens)
        print()
        checks = [
            (f"repetition_penalty + top_k >= {TARGET_PENALTY_OVER_TOP_K:.0%} of top_k alone at batch {small} and {large}",
             min(penalty[0] / top_k[0], penalty[1] / top_k[1]) >= TARGET_PENALTY_OVER_TOP_K,
             f"{penalty[0] / top_k[0]:.2f}x and {penalty[1] / top_k[1]:.2f}x"),
            (f"onnxruntime fp32 at batch {small} >= {TARGET_ORT_TOKENS_PER_SECOND:,} tokens/s",
             ort_small >= TARGET_ORT_TOKENS_PER_SECOND, f"{ort_small:,.0f}"),
            (f"onnxruntime fp32 >= {TARGET_ORT_OVER_TORCH_CACHE:g}x gen torch with cache (batch {small})",
             ort_small >= TARGET_ORT_OVER_TORCH_CACHE * torch_cache[0], f"{ort_small / torch_cache[0]:.2f}x"),
            (f"onnxruntime fp32 batch {large} >= {TARGET_BATCH_32_OVER_BATCH_1:g}x batch {small}",
             ort_large >= TARGET_BATCH_32_OVER_BATCH_1 * ort_small, f"{ort_large / ort_small:.1f}x"),
        ]
        if wall is None:
            checks.append((f"gen run --max-new-tokens {args.run_tokens} < {TARGET_GEN_RUN_SECONDS} s", None, wall_description))
        else:
            checks.append((f"gen run --max-new-tokens {args.run_tokens} < {TARGET_GEN_RUN_SECONDS} s wall (best of 3)",
                           wall < TARGET_GEN_RUN_SECONDS, f"{wall:.2f} s"))
        for description, passed, value in checks:
            verdict = "n/a " if passed is None else ("met " if passed else "MISS")
            print(f"[{verdict}] {description}: {value}")
        if wall is not None:
            print(f"       ({wall_description})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
