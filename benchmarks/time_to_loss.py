"""Time to a validation loss, side by side in one run: `gen train` with its defaults against
nanoGPT's CPU recipe, and the exact validation loss of each (as `gen eval` computes it).

    python benchmarks/time_to_loss.py [--data PATH]        # gen's defaults beside nanoGPT
    python benchmarks/time_to_loss.py --no-nanogpt --target-loss 2.50 -- --config examples/bigram.toml
                                                           # anything after -- goes to gen train
    python benchmarks/time_to_loss.py --processes 2 -- --batch-size 6
                                                           # under torchrun: 2 processes, global batch 12

Target (issue 10): gen's defaults reach an exact validation loss <= 1.90 in at most half
the wall time of nanoGPT's CPU recipe measured in the same run.

gen runs as a subprocess of the installed `gen` script, so its time includes Python and
torch start-up, reading and tokenizing the corpus (with an empty user cache unless
--warm-cache), training, evaluations and checkpoints. nanoGPT's recipe (its README's
CPU command: 4 layers, 4 heads, 128 wide, block 64, batch 12, 2,000 steps, learning
rate 1e-3 with 100 steps of warmup and a cosine decay to 1e-4, an evaluation of 20
batches per split every 250 steps) runs in this process on the same character tokens
(nanoGPT's prepare.py makes the same 90/10 split), with the model and training step of
benchmarks/nanogpt_model.py; its time starts when its model is built, so it leaves out
start-up and data preparation: a comparison that favours nanoGPT.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NANOGPT_RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
                      lr=1e-3, min_lr=1e-4, warmup_iters=100, eval_interval=250, eval_iters=20)


def nanogpt_recipe(data: str, threads: int | None) -> tuple[float, float]:
    """Train nanoGPT's CPU recipe here; return (wall seconds, exact validation loss)."""
    import numpy as np
    import torch

    from gen.core.data import load_dataset
    from gen.core.scoring import exact_loss
    from nanogpt_model import GPT, GPTConfig

    if threads:
        torch.set_num_threads(threads)
    recipe = NANOGPT_RECIPE
    dataset = load_dataset(data, tokenizer_spec="char", progress=False)
    train, val = dataset.train_ids.astype(np.int64), dataset.val_ids.astype(np.int64)
    block, batch = recipe["block_size"], recipe["batch_size"]

    def get_batch(split: np.ndarray):
        ix = torch.randint(len(split) - block, (batch,))
        x = torch.stack([torch.from_numpy(split[i:i + block]) for i in ix])
        y = torch.stack([torch.from_numpy(split[i + 1:i + 1 + block]) for i in ix])
        return x, y

    def get_lr(step: int) -> float:  # nanoGPT's train.py
        if step < recipe["warmup_iters"]:
            return recipe["lr"] * (step + 1) / (recipe["warmup_iters"] + 1)
        ratio = (step - recipe["warmup_iters"]) / (recipe["max_iters"] - recipe["warmup_iters"])
        return recipe["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (recipe["lr"] - recipe["min_lr"])

    started = time.perf_counter()
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=block, vocab_size=dataset.tokenizer.vocab_size, n_layer=recipe["n_layer"],
                          n_head=recipe["n_head"], n_embd=recipe["n_embd"], dropout=0.0, bias=False))
    optimizer = model.configure_optimizers(0.1, recipe["lr"], (0.9, 0.99), "cpu")
    x, y = get_batch(train)
    for step in range(recipe["max_iters"] + 1):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
        if step % recipe["eval_interval"] == 0:  # estimate_loss(): both splits, eval_iters batches each
            model.eval()
            with torch.no_grad():
                for split in (train, val):
                    for _ in range(recipe["eval_iters"]):
                        model(*get_batch(split))
            model.train()
        if step == recipe["max_iters"]:
            break
        _, loss = model(x, y)
        x, y = get_batch(train)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # log_interval=1 in the CPU recipe
    wall = time.perf_counter() - started
    model.eval()

    def logits_of(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(ids)
            # nanoGPT's forward returns the last position only without targets; give targets.
            logits, _ = model(x, torch.zeros_like(x))
        return logits.numpy()

    loss, _ = exact_loss(logits_of, dataset.val_ids, block)
    return wall, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="shakespeare",
                        help="corpus: a path, or 'shakespeare' (downloaded once, before the clock starts)")
    parser.add_argument("--gen", default=str(Path(sys.executable).parent / "gen"), help="the gen script")
    parser.add_argument("--warm-cache", action="store_true",
                        help="use the user cache as it is (default: an empty one, so tokenizing counts)")
    parser.add_argument("--target-loss", type=float, default=1.90, help="exact val loss to reach (bigram: 2.50)")
    parser.add_argument("--no-nanogpt", action="store_true", help="time gen alone")
    parser.add_argument("--processes", type=int, default=None,
                        help="run gen train under torchrun with this many processes (--batch-size is per process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for nanoGPT (default: torch's)")
    parser.add_argument("train_args", nargs="*", help="extra gen train options, after --")
    args = parser.parse_args()
    from gen.core.data import corpus_path

    data = str(corpus_path(args.data))  # a known corpus is downloaded into the user cache before timing
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()), "(other work slows this down)")

    with tempfile.TemporaryDirectory(prefix="gen-time-to-loss-") as scratch:
        environment = dict(os.environ)
        if not args.warm_cache:
            environment["XDG_CACHE_HOME"] = str(Path(scratch) / "cache")
        out = Path(scratch) / "out"
        command = [args.gen, "train", "--data", data, "--out", str(out), *args.train_args]
        if args.processes:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", str(args.processes), *command]
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, env=environment)
        wall = time.perf_counter() - started

        evaluation = subprocess.run([args.gen, "eval", "--checkpoint", str(out), "--json"],
                                    check=True, env=environment, capture_output=True, text=True)
        report = json.loads(evaluation.stdout)
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])

    nanogpt = None
    if not args.no_nanogpt:
        print("nanoGPT's CPU recipe, in this process...", flush=True)
        nanogpt = nanogpt_recipe(data, args.threads)

    print()
    print(f"{'':24}{'wall s':>8}{'exact val loss':>16}{'steps':>8}")
    print(f"{'gen train (defaults)':24}{wall:8.1f}{report['loss']:16.4f}{last['step']:8d}")
    if nanogpt:
        print(f"{'nanoGPT CPU recipe':24}{nanogpt[0]:8.1f}{nanogpt[1]:16.4f}{NANOGPT_RECIPE['max_iters']:8d}")
        ratio = wall / nanogpt[0]
        print(f"gen's time is {ratio:.2f}x nanoGPT's (target <= 0.50); "
              f"{report['bits_per_character']:.4f} bits/char over {report['tokens']:,} tokens")
        met = ratio <= 0.5 and report["loss"] <= args.target_loss
    else:
        met = report["loss"] <= args.target_loss
    print("target met" if met else "target NOT met")


if __name__ == "__main__":
    main()
