"""Corpora larger than memory: gen prepare's speed, gen train's memory, batch sampling's cost.

    python benchmarks/large_corpus.py                  # 100 MB and 2 GB corpora (the 2 GB case takes a while)
    python benchmarks/large_corpus.py --large-mb 0     # the 100 MB corpus alone

The corpora are generated text (words drawn at random, lines of 12 words) written under
/tmp and deleted at the end, with their prepared folders. Three measurements:

1. `gen prepare` MB/s with 1 and 2 worker processes, beside today's in-memory path on the
   same text (gen.core.data.load_dataset with an empty cache: read, learn the char
   vocabulary, encode, cache), in interleaved rounds.
2. The peak resident memory (ru_maxrss, of the `gen train` process alone) of a few steps
   of gen train on each prepared corpus (char tokens for the small one, byte tokens, as many
   and as quick to prepare, for the large one), under a 4 GB address-space limit (RLIMIT_AS,
   set in the child before it runs gen); beside it the in-memory path on the small corpus.
3. The cost of drawing one batch (12 x 65 ids, the default recipe's) from the shards and
   from the same ids in memory, interleaved, beside the time of one training step (one
   torch thread); on the large corpus the shards exceed gen.core.shards.MAPPED_BYTES, so
   maps are closed and opened again as batches wander.

The machine is shared: the load average is printed beside each figure.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GEN = str(Path(sys.executable).parent / "gen")
ADDRESS_LIMIT = 4 * 2**30
TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "64", "--batch-size", "12",
         "--max-iters", "5", "--eval-interval", "5", "--eval-iters", "2", "--device", "cpu", "--dtype", "float32"]


def load() -> str:
    return f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """`megabytes` MB of random words, written 16 MB at a time: 2 distinct blocks, then repeated
    (what is measured does not depend on the text, and drawing it is slow on a busy machine)."""
    rng = np.random.default_rng(seed)
    words = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9)))
                      for _ in range(2000)])
    blocks, written, target = [], 0, megabytes * 10**6
    with open(path, "w", encoding="utf-8") as file:
        while written < target:
            if len(blocks) < 2:
                lines = words[rng.integers(0, len(words), size=2_600_000)].reshape(-1, 13)  # (lines, 13)
                blocks.append("\n".join(" ".join(line) for line in lines) + "\n")
                block = blocks[-1]
            else:
                block = blocks[(written // len(blocks[0])) % 2]
            block = block[:target - written]
            file.write(block)
            written += len(block)


def timed(command: list[str], env: dict | None = None, limit: int | None = None) -> tuple[float, int, str]:
    """(seconds, peak resident bytes of the child, its output) of running `command`."""
    def limited():
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})}, preexec_fn=limited)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return seconds, usage.ru_maxrss * 1024, output


IN_MEMORY = "import sys; from gen.core.data import load_dataset; load_dataset(sys.argv[1], tokenizer_spec='char')"


def prepare_speed(corpus: Path, work: Path, rounds: int) -> None:
    megabytes = corpus.stat().st_size / 1e6
    figures = {"gen prepare, 1 worker": [], "gen prepare, 2 workers": [], "in-memory path (load_dataset)": []}
    for _ in range(rounds):
        for name in figures:
            cache = tempfile.mkdtemp(dir=work)  # an empty cache: nothing encoded before
            env = {"XDG_CACHE_HOME": cache}
            if name.startswith("gen prepare"):
                workers = name.split(", ")[1].split()[0]
                command = [GEN, "prepare", "--data", str(corpus), "--out", str(work / "speed"), "--overwrite",
                           "--workers", workers]
            else:
                command = [sys.executable, "-c", IN_MEMORY, str(corpus)]
            seconds, peak, _ = timed(command, env)
            figures[name].append((seconds, peak))
            shutil.rmtree(cache)
            print(f"  {name}: {seconds:.1f} s, {megabytes / seconds:.1f} MB/s, peak RSS {peak / 1e6:,.0f} MB "
                  f"{load()}", flush=True)
    print(f"prepare speed on {megabytes:,.0f} MB of text (medians of {rounds} interleaved rounds):")
    for name, runs in figures.items():
        seconds = statistics.median(run[0] for run in runs)
        peak = statistics.median(run[1] for run in runs)
        print(f"  {name:32s} {megabytes / seconds:6.1f} MB/s  ({seconds:.1f} s, peak RSS {peak / 1e6:,.0f} MB) {load()}")
    shutil.rmtree(work / "speed", ignore_errors=True)


def train_memory(label: str, data: Path, work: Path) -> int:
    out = work / f"run-{label.replace(' ', '-')}"
    seconds, peak, output = timed([GEN, "train", "--data", str(data), "--out", str(out), *TRAIN],
                                  env={"XDG_CACHE_HOME": str(work / "cache")}, limit=ADDRESS_LIMIT)
    shutil.rmtree(out, ignore_errors=True)
    print(f"  gen train, 5 steps, {label:34s} peak RSS {peak / 1e6:7,.0f} MB ({seconds:.0f} s, under RLIMIT_AS "
          f"{ADDRESS_LIMIT / 2**30:.0f} GiB) {load()}", flush=True)
    return peak


def sampling_cost(folder: Path, label: str, rounds: int, batches: int) -> None:
    """Batches drawn from all of the folder's training shards, and from (at most) its first
    50 million ids in memory; the two draw the same batch where the shards hold those ids."""
    import torch

    from gen.core.data import load_dataset
    from gen.core.training.loop import BatchSampler

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    train_ids = load_dataset(str(folder)).train_ids
    in_memory = np.asarray(train_ids[:50_000_000])  # at most 400 MB of int64
    samplers = {f"shards (np.memmap), {label}": BatchSampler(train_ids, 64, 12, cpu),
                "in-memory array": BatchSampler(in_memory, 64, 12, cpu)}
    if len(train_ids) * train_ids.dtype.itemsize > ADDRESS_LIMIT // 4:
        # what gen train does under the benchmark's RLIMIT_AS: maps up to a quarter of it, reads the rest
        limited = load_dataset(str(folder)).train_ids
        limited.mapped_bytes = ADDRESS_LIMIT // 4
        samplers[f"shards, {label}, {ADDRESS_LIMIT // 2**30} GiB RLIMIT_AS"] = BatchSampler(limited, 64, 12, cpu)
    times = {name: [] for name in samplers}
    for _ in range(rounds):
        for name, sampler in samplers.items():
            generator = torch.Generator().manual_seed(1)
            started = time.perf_counter()
            for _ in range(batches):
                sampler.sample(generator)
            times[name].append((time.perf_counter() - started) / batches)
    same_ids = BatchSampler(train_ids.view(0, len(in_memory)), 64, 12, cpu)
    batch, other = (sampler.sample(torch.Generator().manual_seed(1)) for sampler in (same_ids, samplers["in-memory array"]))
    assert all(torch.equal(a, b) for a, b in zip(batch, other))  # the same batch either way
    print(f"batch sampling, batch 12 x block 64 (medians of {rounds} interleaved rounds of {batches}):")
    for name, runs in times.items():
        print(f"  {name:44s} {statistics.median(runs) * 1e6:8.1f} us per batch {load()}")


def verify_speed(folder: Path) -> None:
    """What gen train --verify costs: every shard read, hashed and scanned for its largest id."""
    from gen.core.shards import open_token_folder

    started = time.perf_counter()
    tokens = open_token_folder(folder, verify=True).tokens
    seconds = time.perf_counter() - started
    size = len(tokens) * tokens.dtype.itemsize
    print(f"  gen train --verify reads {size / 1e6:,.0f} MB of shards in {seconds:.1f} s, {size / seconds / 1e6:,.0f} "
          f"MB/s (from the page cache) {load()}", flush=True)


def train_step_time(steps: int = 20) -> tuple[int, float]:
    """The median time of a training step of TRAIN's model (for scale beside the sampling cost)."""
    import torch

    from gen.core.training.checkpoint import build_model
    from gen.core.training.config import TrainConfig
    from gen.core.training.loop import make_optimizer

    torch.set_num_threads(1)
    model = build_model("gpt", {"vocab_size": 64, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64})
    optimizer = make_optimizer(model, TrainConfig())
    inputs = torch.randint(64, (12, 64))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        _, loss = model(inputs, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return steps, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small-mb", type=int, default=100)
    parser.add_argument("--large-mb", type=int, default=2000, help="0 leaves the large corpus out")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gen-large-corpus-", dir="/tmp"))
    try:
        print(f"generating {args.small_mb} MB of text in {work} {load()}", flush=True)
        small = work / "small.txt"
        write_corpus(small, args.small_mb)
        prepare_speed(small, work, args.rounds)
        subprocess.run([GEN, "prepare", "--data", str(small), "--out", str(work / "small"), "--workers", "2"],
                       check=True, capture_output=True, env={**os.environ, "XDG_CACHE_HOME": str(work / "cache")})
        sampling_cost(work / "small", f"{args.small_mb} MB", args.rounds * 3, 500)
        _, step_seconds = train_step_time()
        print(f"  one training step of this benchmark's model (batch 12 x block 64): {step_seconds * 1e6:,.0f} us "
              f"{load()}")
        verify_speed(work / "small")
        print("peak resident memory of gen train:")
        peaks = {"small": train_memory(f"on {args.small_mb} MB of token shards", work / "small", work)}
        train_memory(f"on the {args.small_mb} MB text (in memory)", small, work)
        if args.large_mb:
            large = work / "large.txt"
            write_corpus(large, args.large_mb, seed=1)
            # byte tokens: what is measured here is training's memory, and byte encoding is the
            # quickest way to 2 GB of shards (as many ids as char's, also uint16)
            seconds, peak, _ = timed([GEN, "prepare", "--data", str(large), "--out", str(work / "large"),
                                      "--tokenizer", "byte"], env={"XDG_CACHE_HOME": str(work / "cache")})
            large.unlink()  # only the shards from here on
            print(f"  (gen prepare of {args.large_mb:,} MB, byte tokens, 1 worker: {seconds:.0f} s, "
                  f"{args.large_mb / seconds:.1f} MB/s, peak RSS {peak / 1e6:,.0f} MB) {load()}", flush=True)
            peaks["large"] = train_memory(f"on {args.large_mb:,} MB of token shards", work / "large", work)
            sampling_cost(work / "large", f"{args.large_mb:,} MB", args.rounds * 3, 500)
            print(f"  the {args.large_mb:,} MB corpus's peak is {peaks['large'] / peaks['small']:.2f}x the "
                  f"{args.small_mb} MB one's (target: within 20%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
