"""gen beside llama.cpp on the same weights: batch 1, greedy, one thread each, interleaved rounds.

    .venv/bin/python benchmarks/vs_llamacpp.py --data FILE [--shapes quick big] [--rounds 5] [--train-steps 20]

llama.cpp runs through llama-cpp-python, which ships only a source archive: the first run
builds its wheel once into the user cache (tens of minutes on 2 cores; the build log is
~/.cache/gen/llama-cpp/build.log) and installs it with `pip install --target` into
~/.cache/gen/llama-cpp/site, which this script alone puts on sys.path: the environment you
run it in stays as it was. Later runs reuse both.

For each shape (quick: 4 layers, 4 heads, 128 wide, block 64; big: 6 layers, 6 heads,
384 wide, block 256; the character vocabulary of --data), one model, trained for
--train-steps steps on --data by `gen train` (0: random weights), is written
- as ONNX by `gen export` (gen's fused graph as `gen export` writes it by default, in fp32,
  int8 and int4; and with the fixed-capacity cache bound once with IO binding,
  `--static-cache`: onnxruntime's GroupQueryAttention writing into it in place, in fp32,
  int8 and int4);
- as GGUF by `gen export --gguf` (f32, f16, q8_0, q4_0).
Then every system generates, in interleaved rounds (each round runs every system once, so
a busy machine slows them alike), the greedy continuation of "\\n" to the end of one
window, several times per measurement: gen through its generation loop
(gen.core.generation.generate_ids, what `OnnxModel.generate` runs below the text), llama.cpp
through llama_cpp.Llama.eval and an argmax of its logits. The table gives the best and the
median tokens/s over the rounds, the ratio to the llama.cpp row it is paired with, the load
average, and whether the greedy ids agree (with the largest logit difference along the way).
The model uses GELU's tanh approximation (`--activation gelu_tanh`, GPT-2's), which is what
llama.cpp's gpt2 computes; `--activation gelu` (gpt's default, the exact GELU) shows what the
approximation changes.

Then the split of gen's step: the time inside onnxruntime's session (run /
run_with_iobinding, timed alone) against everything around it, per token, and the
ceiling that split implies (the session alone) against llama.cpp's whole step; under
that, onnxruntime's kernels alone (its own profiler's per-node times, summed per step:
the floor of what these CPU kernels can do) against llama.cpp's whole step; and batch
32 rows (fp32 against int4, in both cache designs, with the matrix products' kernel time).

The machine this runs on is shared: every figure carries the 1-minute load average at the
time it was measured. Compare rows only within one run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gen.core.data import cache_dir, corpus_path, read_text
from gen.core.generation import generate_ids
from gen.core.sampling import build_sampler_chain

LLAMA_CPP_VERSION = "0.3.36"
# Only the library: no tools, server, examples or tests, tuned for this processor.
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON")
SHAPES = {
    "quick": dict(block_size=64, n_layer=4, n_head=4, n_embd=128),  # nanoGPT's CPU recipe
    "big": dict(block_size=256, n_layer=6, n_head=6, n_embd=384),  # nanoGPT's GPU recipe
}
# gen's ONNX designs and the GGUF file each is paired with (the same precision, or the nearest).
PAIRS = {
    "gen fp32": "llama.cpp f32",
    "gen int8": "llama.cpp q8_0",
    "gen int4": "llama.cpp q4_0",
    "gen fp32, static cache": "llama.cpp f32",
    "gen int8, static cache": "llama.cpp q8_0",
    "gen int4, static cache": "llama.cpp q4_0",
}
GGUF_TYPES = {"llama.cpp f32": "f32", "llama.cpp f16": "f16", "llama.cpp q8_0": "q8_0", "llama.cpp q4_0": "q4_0"}


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


# --- llama-cpp-python, built once into the user cache ---------------------------------------


def llama_cpp_module():
    """llama_cpp imported from the user cache, built and installed there first when it is not."""
    home = cache_dir() / "llama-cpp"
    site = home / "site"
    if not (site / "llama_cpp" / "__init__.py").exists():
        wheels = home / "wheels"
        wheel = _wheel_in(wheels)
        if wheel is None:
            log = home / "build.log"
            print(f"building llama-cpp-python {LLAMA_CPP_VERSION} from source into {wheels}: this takes minutes "
                  f"(tens of them on 2 cores); log: {log}", flush=True)
            wheels.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as output:
                subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", f"llama-cpp-python=={LLAMA_CPP_VERSION}",
                                "-w", str(wheels)], env={**os.environ, "CMAKE_ARGS": CMAKE_ARGS}, stdout=output,
                               stderr=subprocess.STDOUT, check=True)
            wheel = _wheel_in(wheels)
        # --no-deps: numpy, typing-extensions and jinja2 come from this environment; diskcache (imported by
        # llama_cpp at start-up) goes into the cache beside it.
        for requirement in (str(wheel), "diskcache>=5.6"):
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                            str(site), requirement], check=True)
    sys.path.insert(0, str(site))
    import llama_cpp

    return llama_cpp


def _wheel_in(folder: Path) -> Path | None:
    wheels = sorted(folder.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    return wheels[-1] if wheels else None


# --- the models and their files ---------------------------------------------------------------


def gen_command() -> str:
    return shutil.which("gen", path=str(Path(sys.executable).parent)) or "gen"


def model_of(shape: str, data: Path, steps: int, activation: str, work: Path):
    """(a gpt of `shape` with `activation`, its tokenizer document): trained `steps` steps on `data`
    by `gen train`, or with 0 steps its random initialisation (seed 0) over the characters of `data`."""
    config = dict(SHAPES[shape], activation=activation)
    if steps == 0:
        import torch

        from gen.core.tokenizer import tokenizer_to_dict
        from gen.plugins.gpt import GPT
        from gen.plugins.tokenizers import CharTokenizer

        tokenizer = CharTokenizer.train(read_text(data))
        torch.manual_seed(0)
        return GPT.from_config(dict(config, vocab_size=tokenizer.vocab_size)).eval(), tokenizer_to_dict("char", tokenizer)
    from gen.core.training.checkpoint import load_checkpoint

    out = work / "run"
    command = [gen_command(), "train", "--data", str(data), "--out", str(out), "--tokenizer", "char",
               "--block-size", str(config["block_size"]), "--n-layer", str(config["n_layer"]),
               "--n-head", str(config["n_head"]), "--n-embd", str(config["n_embd"]), "--max-iters", str(steps),
               "--eval-interval", str(steps), "--eval-iters", "2", "--batch-size", "8", "--seed", "0",
               "--model", f"gpt:activation={activation}"]
    trained = subprocess.run(command, capture_output=True, text=True)
    if trained.returncode != 0:
        sys.exit(f"gen train failed: {trained.stderr.strip() or trained.stdout.strip()}")
    loaded = load_checkpoint(out, device="cpu")
    return loaded.model, loaded.tokenizer_document


def write_files(model, tokenizer_document: dict, work: Path) -> dict[str, Path]:
    """Every ONNX design and GGUF type of the model, by the row name that runs it."""
    from gen.export.gguf import write_gguf
    from gen.export.onnx_export import ExportOptions, export_model

    files = {}
    designs = {"gen fp32": dict(), "gen int8": dict(quantize="int8"), "gen int4": dict(quantize="int4"),
               "gen fp32, static cache": dict(static_cache=True),
               "gen int8, static cache": dict(static_cache=True, quantize="int8"),
               "gen int4, static cache": dict(static_cache=True, quantize="int4")}
    for name, options in designs.items():
        path = work / f"{name.replace(' ', '_').replace(',', '')}.onnx"
        export_model(model, path, tokenizer_document=tokenizer_document, model_name="gpt",
                     options=ExportOptions(progress=None, verify=False, **options))
        files[name] = path
    for name, gguf_type in GGUF_TYPES.items():
        files[name] = write_gguf(model, tokenizer_document, work / f"model-{gguf_type}.gguf", gguf_type=gguf_type,
                                 say=None)
    return files


# --- the two systems, generating greedily ------------------------------------------------------


class TimedSession:
    """An onnxruntime session that adds up the seconds spent inside run and run_with_iobinding."""

    def __init__(self, session):
        self.session = session
        self.seconds = 0.0

    def run(self, *arguments, **keywords):
        start = time.perf_counter()
        try:
            return self.session.run(*arguments, **keywords)
        finally:
            self.seconds += time.perf_counter() - start

    def run_with_iobinding(self, *arguments, **keywords):
        start = time.perf_counter()
        try:
            return self.session.run_with_iobinding(*arguments, **keywords)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self.session, name)


def kernel_profile(path: Path, prompt: list[int], count: int, rows: int) -> dict[str, float]:
    """Microseconds per decode step inside onnxruntime's kernels, by operator type and in all
    ("kernels"), from onnxruntime's own profiler over one greedy generation of `rows` rows (its
    timing adds a few microseconds to every node: compare like with like)."""
    import json

    import onnxruntime

    from gen.runtime.onnx_model import OnnxModel

    model = OnnxModel(path, threads=1)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    model.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in generate_ids(model, [prompt] * rows, build_sampler_chain(["greedy"]), None, count):
        pass
    events = json.loads(Path(model.session.end_profiling()).read_text())
    runs = [event for event in events if event.get("cat") == "Session" and event["name"] == "model_run"]
    decode_runs = len(runs) - 1  # the first run is the prefill of the prompt
    first_decode = runs[1]["ts"]
    per_step: dict[str, float] = {"kernels": 0.0}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_decode:
            operator = event["args"]["op_name"]
            per_step[operator] = per_step.get(operator, 0.0) + event["dur"] / decode_runs
            per_step["kernels"] += event["dur"] / decode_runs
    return per_step


class GenRunner:
    """gen's generation loop on an ONNX export, greedy."""

    def __init__(self, path: Path):
        from gen.runtime.onnx_model import OnnxModel

        self.model = OnnxModel(path, threads=1)
        self.model.session = TimedSession(self.model.session)

    def greedy(self, prompt: list[int], count: int, rows: int = 1) -> tuple[list[int], list[np.ndarray]]:
        ids, logits = [], []
        for next_ids, step_logits in generate_ids(self.model, [prompt] * rows, build_sampler_chain(["greedy"]),
                                                  None, count):
            ids.append(int(next_ids[0]))
            logits.append(step_logits[0])
        return ids, logits


class LlamaRunner:
    """llama.cpp through llama-cpp-python: Llama.eval one token at a time, and an argmax of the
    last token's logits read where llama.cpp's own samplers read them (llama_get_logits_ith)."""

    def __init__(self, llama_cpp, path: Path, context: int):
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, n_threads=1,
                                   n_threads_batch=1, verbose=False)
        self.vocab_size = self.llm.n_vocab()

    def last_logits(self) -> np.ndarray:
        pointer = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,))

    def greedy(self, prompt: list[int], count: int) -> tuple[list[int], list[np.ndarray]]:
        llm = self.llm
        llm.reset()
        llm.eval(prompt)
        ids, logits = [], []
        for _ in range(count):
            step_logits = self.last_logits()
            ids.append(int(np.argmax(step_logits)))
            logits.append(step_logits.copy())
            if len(ids) < count:
                llm.eval([ids[-1]])
        return ids, logits


def tokens_per_second(runner, prompt: list[int], count: int, generations: int) -> float:
    start = time.perf_counter()
    for _ in range(generations):
        runner.greedy(prompt, count)
    return generations * count / (time.perf_counter() - start)


def agreement(gen_run, llama_run) -> str:
    """Whether two greedy runs give the same ids, and their largest logit difference while they do."""
    (gen_ids, gen_logits), (llama_ids, llama_logits) = gen_run, llama_run
    same = next((i for i, (a, b) in enumerate(zip(gen_ids, llama_ids)) if a != b), len(gen_ids))
    difference = max(float(np.abs(a - b).max()) for a, b in zip(gen_logits[:same + 1], llama_logits[:same + 1]))
    verdict = "ids agree" if same == len(gen_ids) else f"ids differ from token {same}"
    return f"{verdict}, max |logit difference| {difference:.1e}"


# --- one shape ----------------------------------------------------------------------------------


def measure(shape: str, args, llama_cpp, work: Path) -> list[str]:
    """Run one shape and return its lines for the summary."""
    weights = f"{args.train_steps} training steps on {args.data}" if args.train_steps else "random weights (seed 0)"
    print(f"\n== {shape}: {SHAPES[shape]}, activation {args.activation}, {weights} ({load()})", flush=True)
    (work / shape).mkdir(parents=True, exist_ok=True)
    files = write_files(*model_of(shape, Path(args.data), args.train_steps, args.activation, work / shape),
                        work / shape)
    block = SHAPES[shape]["block_size"]
    count = block - 1  # "\n" and its continuation fill exactly one window: nothing slides, in either system
    generations = max(1, args.tokens // count)
    runners = {name: GenRunner(path) for name, path in files.items() if name.startswith("gen")}
    runners.update({name: LlamaRunner(llama_cpp, path, block) for name, path in files.items()
                    if name.startswith("llama")})
    tokenizer = runners["gen fp32"].model.tokenizer
    prompt = tokenizer.encode("\n")
    sample = read_text(args.data)[:2_000]
    encoded = runners["llama.cpp f32"].llm.tokenize(sample.encode("utf-8"), add_bos=False)
    print(f"llama.cpp's tokenizer {'encodes' if encoded == tokenizer.encode(sample) else 'does NOT encode'} the first "
          f"{len(sample):,} characters of --data as gen's does")

    greedy = {name: runner.greedy(prompt, count) for name, runner in runners.items()}  # also the warm-up
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    loads: list[float] = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, runner in runners.items():
            speeds[name].append(tokens_per_second(runner, prompt, count, generations))
    best = {name: max(values) for name, values in speeds.items()}
    median = {name: statistics.median(values) for name, values in speeds.items()}
    print(f"batch 1, greedy, 1 thread, {generations} x {count} tokens per measurement, {args.rounds} interleaved "
          f"rounds; load average {min(loads):.1f}-{max(loads):.1f} during them")
    header = f"{'tokens/s':<24}{'best':>8}{'median':>8}   {'vs llama.cpp (best)':<32}greedy ids"
    print(header + "\n" + "-" * (len(header) + 40))
    lines = []
    for name in runners:
        pair = PAIRS.get(name)
        versus = f"{best[name] / best[pair]:.2f}x {pair}" if pair else ""
        agree = agreement(greedy[name], greedy[pair]) if pair else ""
        row = f"{name:<24}{best[name]:>8,.0f}{median[name]:>8,.0f}   {versus:<32}{agree}"
        print(row)
        lines.append(f"{shape} {row}  (load {min(loads):.1f}-{max(loads):.1f})")

    # The split of gen's step: inside the session against around it, over one more measurement each.
    print(f"\nwhere gen's step goes (batch 1, {generations} x {count} tokens; {load()}):")
    for name in [name for name in runners if name.startswith("gen")]:
        runner = runners[name]
        runner.model.session.seconds = 0.0
        start = time.perf_counter()
        for _ in range(generations):
            runner.greedy(prompt, count)
        whole = time.perf_counter() - start
        inside = runner.model.session.seconds
        tokens = generations * count
        pair = PAIRS[name]
        line = (f"{name}: {whole / tokens * 1e6:.0f} us/token, of which onnxruntime's session {inside / tokens * 1e6:.0f} "
                f"({inside / whole:.0%}) and gen around it {(whole - inside) / tokens * 1e6:.0f}; the session alone "
                f"would make {tokens / inside:,.0f} tokens/s, {tokens / inside / best[pair]:.2f}x {pair}'s whole step")
        print("  " + line)
        lines.append(f"{shape} {line}")
    # Inside the session: onnxruntime's profiler's time per operator type. It adds its own timing
    # to every node (a whole step's worth at the quick shape), so its figures are shares of the
    # session's time by operator, not a floor under it.
    print(f"\ninside the session, by operator (onnxruntime's profiler, one generation of {count} tokens; {load()}):")
    for name in [name for name in runners if name.startswith("gen")]:
        kernels = kernel_profile(files[name], prompt, count, rows=1)
        shares = sorted(((us / kernels["kernels"], op) for op, us in kernels.items() if op != "kernels"), reverse=True)
        line = f"{name}: " + ", ".join(f"{op} {share:.0%}" for share, op in shares[:4])
        print("  " + line)
        lines.append(f"{shape} {line}")

    # Batch 32: fp32 against int4, gen only (interleaved, best of the rounds).
    rows = 32
    batch_speeds: dict[str, list[float]] = {name: [] for name in runners if name.startswith("gen")}
    for _ in range(args.rounds):
        for name in batch_speeds:
            start = time.perf_counter()
            runners[name].greedy(prompt, count, rows=rows)
            batch_speeds[name].append(rows * count / (time.perf_counter() - start))
    line = f"batch {rows} ({load()}): " + ", ".join(f"{name} {max(values):,.0f}" for name, values in batch_speeds.items())
    ratio = {suffix: max(batch_speeds[f"gen int4{suffix}"]) / max(batch_speeds[f"gen fp32{suffix}"])
             for suffix in ("", ", static cache")}
    line += f" tokens/s; int4 / fp32 {ratio['']:.2f}x, with the static cache {ratio[', static cache']:.2f}x"
    print(line)
    lines.append(f"{shape} {line}")
    # Where int4 and fp32 differ at batch 32: the matrix products' kernels, per step.
    products = {name: kernel_profile(files[name], prompt, count, rows=rows) for name in ("gen fp32", "gen int4")}
    line = (f"batch {rows} kernels per step: fp32 MatMul {products['gen fp32'].get('MatMul', 0):.0f} us, int4 MatMulNBits "
            f"{products['gen int4'].get('MatMulNBits', 0):.0f} us (+ MatMul {products['gen int4'].get('MatMul', 0):.0f}); "
            f"all kernels fp32 {products['gen fp32']['kernels']:.0f}, int4 {products['gen int4']['kernels']:.0f} us")
    print(line)
    lines.append(f"{shape} {line}")
    for runner in runners.values():  # llama.cpp's model and context, freed while the module is whole
        if isinstance(runner, LlamaRunner):
            runner.llm.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a UTF-8 text file (or 'shakespeare'): the vocabulary and "
                                                       "the training text")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["quick", "big"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=600, help="about this many tokens per measurement")
    parser.add_argument("--activation", choices=["gelu_tanh", "gelu"], default="gelu_tanh",
                        help="gpt's MLP activation: gelu_tanh is what llama.cpp's gpt2 computes; gelu (gpt's default, "
                             "exact) shows the difference")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of gen train on --data (0: random "
                                                                   "weights)")
    args = parser.parse_args()
    args.data = str(corpus_path(args.data))
    read_text(args.data)  # a wrong --data fails here, before anything is built
    llama_cpp = llama_cpp_module()
    import onnxruntime

    print(f"llama-cpp-python {llama_cpp.__version__}, onnxruntime {onnxruntime.__version__}; {os.cpu_count()} CPUs; "
          f"{load()}")
    work = Path(tempfile.mkdtemp(prefix="gen-vs-llamacpp-"))
    try:
        lines = [line for shape in args.shapes for line in measure(shape, args, llama_cpp, work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary:\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
