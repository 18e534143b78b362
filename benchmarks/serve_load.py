"""Load on `gen serve`, on 127.0.0.1 only: 1, 8, 32 and 64 concurrent streaming clients.

    .venv/bin/python benchmarks/serve_load.py [--model model.onnx] [--data PATH] [--clients 1 8 32 64]

For each number of clients, every client sends --requests streaming completions one after
another (each with its own seed and a sampler chain from a fixed list); the script prints the
aggregate tokens/s, time to first token and inter-token latency (p50/p99, measured by the
clients: the gap between two chunks), errors, and checks every completion against the text
the offline `OnnxModel` gives for its seed (nothing lost, nothing mixed between requests).
Then an overload run: 64 clients against a server with a small --max-queue, where the
requests over the queue must get 503 with Retry-After, quickly, and the others the right text.
The baseline is `gen run`'s generation loop (OnnxModel.stream, in this process) on the idle
machine, with the same prompt, sampler and length.

The model is nanoGPT's CPU recipe (the quick recipe: 4 layers, 4 heads, 128 wide, block 64)
with random weights, exported on the fly, or --model. The server runs as its own process
(`gen serve`, default settings but the port), the clients in this one: on a small machine they
share its cores, so the figures are the whole system's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPTS = ["ROMEO:", "JULIET:\n", "First Citizen:\nBefore we proceed any further, hear me speak.", "\n"]
# --samplers mixed: every built-in kind of chain, including those that read the text so far and
# sample each row on its own; the default is what an OpenAI client sends without options.
MIXED_SAMPLERS = [[], ["top_k:k=40", "temperature:t=0.8"], ["top_p:p=0.9"], ["min_p:p=0.1"],
                  ["penalties:presence=0.5"], ["repetition_penalty:penalty=1.2"], ["mirostat:tau=3"], ["greedy"]]
# The targets of issue 11.
MODEL_NAME = "m"  # the name the clients ask for, served with --served-model-name
TARGET_SCALING_32 = 4.0
TARGET_ITL_P99_32_S = 0.100
TARGET_SINGLE_OVER_GEN_RUN = 0.7
# The target of issue 19: the server's CPU per token at 32 clients over the model's alone, in step.
TARGET_SERVER_CPU_OVER_MODEL = 1.5


@dataclass
class Result:
    prompt: str
    sampler: list
    seed: int
    max_tokens: int
    text: str = ""
    tokens: int = 0
    ttft: float | None = None
    gaps: list = field(default_factory=list)
    status: int = 0
    retry_after: str | None = None
    error: str | None = None
    seconds: float = 0.0


def export_quick_recipe(data: str, path: Path) -> None:
    import torch

    from gen.core.data import corpus_path, read_text
    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model
    from gen.plugins.gpt import GPT
    from gen.plugins.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train(read_text(corpus_path(data)))
    torch.manual_seed(0)
    model = GPT.from_config(dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                                 vocab_size=tokenizer.vocab_size))
    export_model(model.eval(), path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(progress=None))


class Server:
    """`gen serve MODEL --port 0 ...` as a subprocess; its URL read from its first line."""

    def __init__(self, model: Path, *options: str):
        gen = shutil.which("gen", path=str(Path(sys.executable).parent)) or "gen"
        self.process = subprocess.Popen([gen, "serve", str(model), "--port", "0", "--served-model-name", MODEL_NAME,
                                         *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if " at http://" not in line:
            raise SystemExit(f"gen serve did not start: {line}{self.process.stderr.read()}")
        self.url = line.split(" at ")[1].split()[0]
        self.process.stdout.readline()  # the batching line

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def one_request(client: httpx.AsyncClient, url: str, result: Result) -> None:
    """One streaming completion. The client stays lean while it runs, so that its own work takes
    little from the server on a small machine: it notes when each network read arrived and
    parses the server-sent events afterwards."""
    body = {"model": MODEL_NAME, "prompt": result.prompt, "max_tokens": result.max_tokens, "seed": result.seed,
            "sampler": result.sampler, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    reads: list[tuple[float, bytes]] = []
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.retry_after = response.headers.get("retry-after")
                result.error = (await response.aread()).decode()[:200]
                return
            async for data in response.aiter_raw():
                reads.append((time.perf_counter(), data))
    except httpx.HTTPError as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        result.seconds = time.perf_counter() - started
    parse_events(reads, started, result)


def parse_events(reads: list[tuple[float, bytes]], started: float, result: Result) -> None:
    """Text, token count, time to first token and the gaps between reads that carried text."""
    buffer, last = b"", None
    for arrived, data in reads:
        buffer += data
        *events, buffer = buffer.split(b"\n\n")
        carried_text = False
        for event in events:
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            chunk = json.loads(event[6:])
            if "error" in chunk:
                result.error = chunk["error"]["message"]
                return
            for choice in chunk["choices"]:
                result.text += choice["text"]
                carried_text = carried_text or bool(choice["text"])
            if chunk.get("usage"):
                result.tokens = chunk["usage"]["completion_tokens"]
        if carried_text:
            if last is None:
                result.ttft = arrived - started
            else:
                result.gaps.append(arrived - last)
            last = arrived


async def load(url: str, clients: int, requests: int, max_tokens: int, first_seed: int, timeout: float,
               samplers: list[list[str]] = ([],)) -> tuple[list[Result], float]:
    """`clients` clients, each sending `requests` streaming completions one after another."""
    results = [[Result(PROMPTS[(c + r) % len(PROMPTS)], samplers[(c * requests + r) % len(samplers)],
                       first_seed + c * requests + r, max_tokens) for r in range(requests)] for c in range(clients)]

    async def client_loop(client, mine):
        for result in mine:
            await one_request(client, url, result)

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client_loop(client, mine) for mine in results)), timeout)
        wall = time.perf_counter() - started
    return [result for mine in results for result in mine], wall


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def mismatches(generator, results: list[Result]) -> int:
    """Completions that differ from the offline OnnxModel's text for their seed."""
    bad = 0
    for result in results:
        if result.status != 200 or result.error:
            continue
        expected = generator.generate([result.prompt], sampler=result.sampler or None, seed=result.seed,
                                      max_new_tokens=result.max_tokens)[0]
        bad += result.text != expected or result.tokens != result.max_tokens
    return bad


def gen_run_tokens_per_second(generator, max_tokens: int, repeats: int) -> float:
    """`gen run`'s loop: one prompt, multinomial sampling, the text streamed piece by piece."""
    best = float("inf")
    for seed in range(repeats):
        started = time.perf_counter()
        for _ in generator.stream(PROMPTS[0], seed=seed, max_new_tokens=max_tokens):
            pass
        best = min(best, time.perf_counter() - started)
    return max_tokens / best


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process `pid` (from /proc,
    Linux; nan elsewhere)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def offline_batch_tokens_per_second(generator, clients: int, max_tokens: int, repeats: int) -> tuple[float, float]:
    """Without a server: one prompt `clients` times as one batch (OnnxModel.generate), the rows in
    step, so every window slides at the same step. The best the model gives at that batch size.
    Returns tokens/s and CPU seconds per token."""
    prompts = [PROMPTS[0]] * clients
    best, cpu = float("inf"), float("inf")
    for seed in range(repeats):
        started, cpu_before = time.perf_counter(), cpu_seconds()
        generator.generate(prompts, seed=seed, max_new_tokens=max_tokens)
        best = min(best, time.perf_counter() - started)
        cpu = min(cpu, cpu_seconds() - cpu_before)
    return clients * max_tokens / best, cpu / (clients * max_tokens)


def scheduler_tokens_per_second(generator, clients: int, requests: int, max_tokens: int) -> tuple[float, float]:
    """Without HTTP: `gen serve`'s scheduler in this process, `clients` threads each submitting
    `requests` completions one after another, as the load's clients do. Returns tokens/s and
    CPU seconds per token."""
    import threading

    from gen.core.sampling import Sampling
    from gen.runtime.scheduler import Choice, Finished, Scheduler

    scheduler = Scheduler(generator, max_batch=32).start()

    def client(number: int) -> None:
        for request in range(requests):
            done = threading.Event()
            prompt = generator.tokenizer.encode(PROMPTS[(number + request) % len(PROMPTS)])
            scheduler.submit([Choice(prompt, Sampling.of(None), seed=number * requests + request,
                                     max_tokens=max_tokens)],
                             lambda event: isinstance(event, Finished) and done.set())
            done.wait()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    started, cpu_before = time.perf_counter(), cpu_seconds()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    scheduler.stop()
    tokens = clients * requests * max_tokens
    return tokens / wall, cpu / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an ONNX export (default: the quick recipe's shape, random weights)")
    parser.add_argument("--data", default="shakespeare", help="the corpus whose characters the random model uses")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take before it counts as hung")
    parser.add_argument("--overload-queue", type=int, default=8, help="--max-queue of the overload run")
    parser.add_argument("--samplers", choices=["default", "mixed"], default="default",
                        help="default: OpenAI's defaults (multinomial); mixed: a chain per request from a list "
                             "of every built-in kind")
    args = parser.parse_args()

    from gen.runtime.onnx_model import OnnxModel

    samplers = MIXED_SAMPLERS if args.samplers == "mixed" else [[]]
    with tempfile.TemporaryDirectory() as work:
        model = Path(args.model) if args.model else Path(work) / "quick.onnx"
        if not args.model:
            export_quick_recipe(args.data, model)
        generator = OnnxModel(model)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"model: {args.model or 'quick recipe shape, random weights'}; {cpus} CPUs to run on, "
              f"load average {os.getloadavg()[0]:.2f} before the runs; samplers: {args.samplers}")
        baseline = gen_run_tokens_per_second(generator, args.max_tokens, repeats=5)
        print(f"gen run's loop (OnnxModel.stream, one prompt, {args.max_tokens} tokens): {baseline:,.0f} tokens/s")

        server = Server(model)
        rows, single = [], None
        try:
            asyncio.run(load(server.url, 1, 1, 20, 10**6, args.timeout))  # warm-up
            for clients in args.clients:
                cpu_before = cpu_seconds(server.process.pid), cpu_seconds()
                results, wall = asyncio.run(load(server.url, clients, args.requests, args.max_tokens,
                                                 clients * 1000, args.timeout, samplers))
                cpu = cpu_seconds(server.process.pid) - cpu_before[0], cpu_seconds() - cpu_before[1]
                tokens = sum(result.tokens for result in results)
                errors = sum(1 for result in results if result.status != 200 or result.error)
                ttft = [result.ttft for result in results if result.ttft is not None]
                gaps = [gap for result in results for gap in result.gaps]
                rate = tokens / wall
                single = rate if clients == 1 else single
                rows.append((clients, len(results), tokens, wall, rate, ttft, gaps, errors,
                             mismatches(generator, results), os.getloadavg()[0], [part / tokens for part in cpu]))
        finally:
            server.stop()

        print()
        print("clients  requests  tokens  wall s  tokens/s  vs 1 client  TTFT p50/p99 ms  ITL p50/p99 ms  "
              "errors  mismatched  load avg  CPU us/token server/clients")
        for clients, count, tokens, wall, rate, ttft, gaps, errors, bad, load_average, cpu in rows:
            scaling = f"{rate / single:.1f}x" if single else "-"
            print(f"{clients:7d}  {count:8d}  {tokens:6d}  {wall:6.2f}  {rate:8,.0f}  {scaling:>11}  "
                  f"{percentile(ttft, 50) * 1e3:6.1f} / {percentile(ttft, 99) * 1e3:6.1f}  "
                  f"{percentile(gaps, 50) * 1e3:5.2f} / {percentile(gaps, 99) * 1e3:6.2f}  "
                  f"{errors:6d}  {bad:10d}  {load_average:8.2f}  {cpu[0] * 1e6:6.0f} / {cpu[1] * 1e6:4.0f}")

        # Overload: more clients than the batch and the queue hold.
        server = Server(model, "--max-batch", "16", "--max-queue", str(args.overload_queue))
        try:
            results, wall = asyncio.run(load(server.url, 64, 1, args.max_tokens, 10**7, args.timeout, samplers))
        finally:
            server.stop()
        refused = [result for result in results if result.status == 503]
        served = [result for result in results if result.status == 200 and not result.error]
        other = len(results) - len(refused) - len(served)
        slowest_refusal = max((result.seconds for result in refused), default=0.0)
        print()
        print(f"overload: 64 clients, --max-batch 16 --max-queue {args.overload_queue}: {len(served)} served "
              f"({mismatches(generator, served)} mismatched), {len(refused)} refused with 503 "
              f"(Retry-After on {sum(r.retry_after is not None for r in refused)}, the slowest answered in "
              f"{slowest_refusal * 1e3:.0f} ms), {other} other errors, all done in {wall:.2f} s")

        print()
        by_clients = {row[0]: row for row in rows}
        if 1 in by_clients and args.samplers == "mixed":
            print("(the comparison with gen run's loop, which samples with multinomial, needs --samplers default)")
        elif 1 in by_clients:
            ratio = by_clients[1][4] / baseline
            print(f"single client through the server: {ratio:.0%} of gen run's tokens/s "
                  f"(target >= {TARGET_SINGLE_OVER_GEN_RUN:.0%}): {'met' if ratio >= TARGET_SINGLE_OVER_GEN_RUN else 'NOT met'}")
        if 32 in by_clients and single:
            scaling = by_clients[32][4] / single
            itl = percentile(by_clients[32][6], 99)
            print(f"32 clients: {scaling:.1f}x one client's tokens/s (target >= {TARGET_SCALING_32:.0f}x), "
                  f"p99 inter-token latency {itl * 1e3:.1f} ms (target < {TARGET_ITL_P99_32_S * 1e3:.0f} ms): "
                  f"{'met' if scaling >= TARGET_SCALING_32 and itl < TARGET_ITL_P99_32_S else 'NOT met'}")
            # Where the ceiling lies: the same work without HTTP, and without a server at all, and
            # the CPU that each part of the system takes per token (all share this machine's cores).
            alone, alone_cpu = scheduler_tokens_per_second(generator, 32, args.requests, args.max_tokens)
            offline, offline_cpu = offline_batch_tokens_per_second(generator, 32, args.max_tokens, repeats=3)
            server_cpu, clients_cpu = by_clients[32][10]
            http_cpu = max(0.0, server_cpu - alone_cpu)
            target = TARGET_SCALING_32 * single
            print(f"  the target is {target:,.0f} tokens/s. Without HTTP, the scheduler alone (32 threads "
                  f"submitting) makes {alone:,.0f} ({alone / single:.1f}x); without a server, one prompt 32 "
                  f"times as one batch in step (OnnxModel.generate) {offline:,.0f} ({offline / single:.1f}x).")
            print(f"  CPU per token: that batch {offline_cpu * 1e6:.0f} us, the scheduler {alone_cpu * 1e6:.0f} us, "
                  f"the server's HTTP side {http_cpu * 1e6:.0f} us more, the 32 clients {clients_cpu * 1e6:.0f} us. "
                  f"At the target, even with scheduling as cheap as that batch, the whole system needs "
                  f"{target * (offline_cpu + http_cpu + clients_cpu):.1f} cores, on {cpus} CPUs")
            ratio = server_cpu / offline_cpu
            print(f"  server CPU per token {server_cpu * 1e6:.0f} us over the model alone in step "
                  f"{offline_cpu * 1e6:.0f} us: {ratio:.2f}x (target <= {TARGET_SERVER_CPU_OVER_MODEL:.1f}x): "
                  f"{'met' if ratio <= TARGET_SERVER_CPU_OVER_MODEL else 'NOT met'}; without HTTP, the scheduler "
                  f"alone {alone_cpu / offline_cpu:.2f}x")
        if 64 in by_clients:
            row = by_clients[64]
            print(f"64 clients: {row[7]} errors, {row[8]} mismatched completions: "
                  f"{'met' if row[7] == 0 and row[8] == 0 else 'NOT met'}")


if __name__ == "__main__":
    main()
