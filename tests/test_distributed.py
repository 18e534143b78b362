"""`gen train` under torchrun: real runs of 2 processes (gloo, on the CPU) of a tiny GPT.

They check what the README promises: the processes end with identical weights, every
step's loss equals a single process's with the same global batch, one run directory
is written (by process 0, which alone runs the hooks), `--resume` continues bit for
bit, a process that dies stops the run within a bounded time, and the checkpoint is
like any other. Every subprocess has a timeout, so a hang fails the test instead of
the suite. Float32 throughout: bfloat16 autocast rounds differently for a batch of
8 rows and one of 16, and equality to 1e-4 is the point.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import gen

BIN = Path(sys.executable).parent
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
GEN_SCRIPT = str(BIN / "gen")  # the documented launch: torchrun ... "$(which gen)" train ...
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--eval-iters", "2",
        "--warmup-iters", "5", "--dtype", "float32", "--device", "cpu"]
RUN_TIMEOUT = 180  # seconds for one torchrun of 20 steps (about 8 s on 2 busy cores)

# Runs gen's command line like the console script, and then saves the weights this
# process ended with, so that the test sees every process's weights, not only the
# checkpoint that process 0 wrote.
KEEP_WEIGHTS = """
import os, sys
from safetensors.torch import save_model
import gen.core.training.loop
from gen.core.cli import cli

runs = []
prepare_run = gen.core.training.loop.prepare_run
def keeping_the_run(*args, **kwargs):
    runs.append(prepare_run(*args, **kwargs))
    return runs[-1]
gen.core.training.loop.prepare_run = keeping_the_run
try:
    cli.main(args=sys.argv[2:], prog_name="gen")
finally:
    if runs:
        save_model(runs[0].trainer.model, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.safetensors"))
"""

# A third-party plugin, installed for one run by putting it and its dist-info on
# PYTHONPATH: it logs which process runs each training hook, and stops at a step.
PLUGIN = """
import os
from gen.core import hookimpl

def log(*words):
    with open(os.environ["GEN_TEST_EVENTS"], "a") as file:
        file.write(" ".join(str(word) for word in (os.environ.get("RANK"), *words)) + "\\n")

@hookimpl
def on_train_start(config):
    log("start", config["world_size"])

@hookimpl
def on_eval(step, metrics):
    log("eval", step)
    return step >= int(os.environ["GEN_TEST_STOP_AT"])

@hookimpl
def on_checkpoint(step, path):
    log("checkpoint", step, os.path.basename(path))
"""

# Runs gen's command line like the console script, with one process going wrong on
# purpose: GEN_TEST_NAN_FROM=k makes process 1's training loss NaN from step k on (its
# gradients too, so the averaged weights become NaN); GEN_TEST_CTRL_C_AT=k sends
# process 0 a SIGINT (Ctrl-C) as it begins step k.
MISBEHAVE = """
import os, signal, sys
import gen.core.training.loop
from gen.core.cli import cli

Trainer, rank = gen.core.training.loop.Trainer, int(os.environ["RANK"])
nan_from, ctrl_c_at = os.environ.get("GEN_TEST_NAN_FROM"), os.environ.get("GEN_TEST_CTRL_C_AT")

if nan_from and rank == 1:
    init = Trainer.__init__
    def init_with_nan(self, *args, **kwargs):
        init(self, *args, **kwargs)
        forward = self.forward
        def nan_forward(inputs, targets):
            logits, loss = forward(inputs, targets)
            return logits, loss * float("nan") if self.step >= int(nan_from) else loss
        self.forward = nan_forward
    Trainer.__init__ = init_with_nan
if ctrl_c_at and rank == 0:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, even under a background job
    train_step = Trainer.train_step
    def interrupted_step(self):
        if self.step == int(ctrl_c_at):
            os.kill(os.getpid(), signal.SIGINT)
        return train_step(self)
    Trainer.train_step = interrupted_step
cli.main(args=sys.argv[1:], prog_name="gen")
"""


pytestmark = pytest.mark.usefixtures("module_cache")  # before the module-scoped runs below


def torchrun(*arguments, cwd, env=None, script=(GEN_SCRIPT,), check=True) -> subprocess.CompletedProcess:
    completed = subprocess.run([*TORCHRUN, *script, *map(str, arguments)], cwd=cwd, capture_output=True,
                               text=True, timeout=RUN_TIMEOUT, env={**os.environ, **(env or {})})
    if check:
        assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def metrics(out: Path) -> list[dict]:
    """The evaluation lines (the --log-interval lines have no val_loss)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "val_loss" in line]


def losses(out: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    return [{key: value for key, value in m.items() if key not in ("elapsed_s", "tokens_per_s")} for m in metrics(out)]


def weights(path: Path) -> dict:
    return load_file(str(path))


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# --- 2 processes against 1 with the same global batch ---------------------------------


@pytest.fixture(scope="module")
def pair(corpus, tmp_path_factory):
    """20 steps on 2 processes of batch 8, evaluated at every step; the weights each
    process ended with are kept beside the run directory."""
    work = tmp_path_factory.mktemp("pair")
    (work / "weights").mkdir()
    script = work / "keep_weights.py"
    script.write_text(KEEP_WEIGHTS)
    completed = torchrun(work / "weights", "train", "--data", corpus, "--out", "out", *TINY, "--batch-size", 8,
                         "--max-iters", 20, "--eval-interval", 1, cwd=work, script=(script,))
    return work, completed


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """The same run in one process with batch 16: the same global batch."""
    out = tmp_path_factory.mktemp("single") / "out"
    result = gen("train", "--data", corpus, "--out", out, *TINY, "--batch-size", 16,
                 "--max-iters", 20, "--eval-interval", 1)
    assert result.exit_code == 0, result.output
    return out


def test_both_processes_end_with_identical_weights(pair, single):
    work, _ = pair
    rank0, rank1 = weights(work / "weights" / "rank0.safetensors"), weights(work / "weights" / "rank1.safetensors")
    assert equal(rank0, rank1)
    assert equal(rank0, weights(work / "out" / "latest" / "model.safetensors"))
    # ... and they are the weights one process trains with the global batch (to float rounding).
    alone = weights(single / "latest" / "model.safetensors")
    assert all(torch.allclose(rank0[key], alone[key], rtol=0, atol=1e-4) for key in alone)


def test_every_step_loses_what_one_process_with_the_global_batch_loses(pair, single):
    work, _ = pair
    two, one = metrics(work / "out"), metrics(single)
    assert [m["step"] for m in two] == [m["step"] for m in one] == list(range(21))
    for a, b in zip(two, one):
        for key in ("train_loss", "val_loss", "batch_loss"):
            assert (key in a) == (key in b) == (key != "batch_loss" or a["step"] > 0)
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-4), (a["step"], key)
    batch_losses = [m["batch_loss"] for m in two[1:]]
    assert len(set(batch_losses)) == 20 and batch_losses[-1] < batch_losses[0] - 0.5  # it trained
    assert two[-1]["tokens"] == one[-1]["tokens"] == 20 * 16 * 32


def test_one_run_directory_written_and_printed_by_one_process(pair):
    work, completed = pair
    assert sorted(path.name for path in work.iterdir()) == ["keep_weights.py", "out", "weights"]
    assert sorted(path.name for path in (work / "out").iterdir()) == ["best", "latest", "metrics.jsonl"]
    config = json.loads((work / "out" / "latest" / "config.json").read_text())
    assert config["world_size"] == 2 and config["step"] == 20
    lines = completed.stdout.splitlines()
    assert lines[0].endswith("512 tokens per step (2 processes x batch 8 x block 32); cpu float32"), lines[0]
    assert completed.stdout.count("step 0: train loss") == 1 and completed.stdout.count("wrote ") == 1


def test_a_distributed_checkpoint_samples_and_exports_on_the_cpu(pair, tmp_path):
    out = pair[0] / "out"
    sampled = gen("sample", "--checkpoint", out, "--prompt", "ROMEO:", "--max-new-tokens", 20, "--seed", 1,
                  "--sampler", "greedy")
    assert sampled.exit_code == 0, sampled.output
    exported = gen("export", tmp_path / "model.onnx", "--checkpoint", out)  # verified against torch
    assert exported.exit_code == 0, exported.output
    ran = gen("run", tmp_path / "model.onnx", "--prompt", "ROMEO:", "--max-new-tokens", 20, "--seed", 1,
              "--sampler", "greedy")
    assert ran.exit_code == 0, ran.output
    assert ran.output == sampled.output


# --- resuming, hooks, a process that dies ---------------------------------------------


def install_plugin(directory: Path) -> dict:
    """The environment of a run with the PLUGIN installed (an entry point in the `gen` group)."""
    (directory / "gen_test_hooks.py").write_text(PLUGIN)
    info = directory / "gen_test_hooks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gen-test-hooks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gen]\nhooks = gen_test_hooks\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))}


def test_resume_of_two_processes_continues_bit_for_bit(corpus, tmp_path):
    # dropout: each process's own RNG must come back; grad accum: no_sync steps too
    options = [*TINY, "--batch-size", 8, "--dropout", 0.1, "--grad-accum", 2, "--max-iters", 20,
               "--eval-interval", 5, "--data", corpus]
    torchrun("train", "--out", "straight", *options, cwd=tmp_path)

    events = tmp_path / "events.txt"
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    env = {**install_plugin(plugin), "GEN_TEST_EVENTS": str(events), "GEN_TEST_STOP_AT": "10"}
    stopped = torchrun("train", "--out", "resumed", *options, cwd=tmp_path, env=env)
    assert "stopped early at step 10" in stopped.stdout
    # Process 0 alone ran the hooks, and its request to stop ended both processes (exit 0).
    assert events.read_text().splitlines() == [
        "0 start 2", "0 eval 0", "0 eval 5", "0 checkpoint 5 latest", "0 checkpoint 5 best",
        "0 eval 10", "0 checkpoint 10 latest", "0 checkpoint 10 best",
    ]
    assert json.loads((tmp_path / "resumed" / "latest" / "config.json").read_text())["step"] == 10

    resumed = torchrun("train", "--out", "resumed", "--resume", cwd=tmp_path)
    assert "resuming" in resumed.stdout
    assert equal(weights(tmp_path / "straight" / "latest" / "model.safetensors"),
                 weights(tmp_path / "resumed" / "latest" / "model.safetensors"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    state = load_file(str(tmp_path / "resumed" / "latest" / "training_state.safetensors"))
    assert {"rng.torch", "rng.rank1.torch", "rng.batches"} <= state.keys()
    assert not torch.equal(state["rng.torch"], state["rng.rank1.torch"])  # each process drops out its own units

    # One process cannot continue what two began: a one-line error, nothing written.
    result = gen("train", "--out", tmp_path / "resumed", "--resume", "--max-iters", 30)
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "was trained by 2 processes" in result.output and "torchrun" in result.output


def _children(parent: int) -> dict[int, str]:
    """The processes whose parent is `parent`, with their RANK (from /proc, Linux)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent_of = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent_of == parent:
            ranks = [item[5:].decode() for item in environment if item.startswith(b"RANK=")]
            children[int(entry.name)] = ranks[0] if ranks else ""
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the processes through /proc")
def test_a_process_that_dies_stops_the_run(corpus, tmp_path):
    """torchrun notices the dead process within 0.1 s and stops the other (SIGTERM, and
    SIGKILL 30 s later if need be): the run ends with an error, well within 60 s."""
    out = tmp_path / "out"
    command = [*TORCHRUN, GEN_SCRIPT, "train", "--data", str(corpus), "--out", str(out), *TINY,
               "--batch-size", "8", "--max-iters", "1000000", "--eval-interval", "5"]
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (out / "metrics.jsonl").exists():  # training is under way on both processes
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.2)
        ranks = {rank: pid for pid, rank in _children(launcher.pid).items()}
        assert set(ranks) == {"0", "1"}, ranks
        os.kill(ranks["1"], signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = launcher.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    assert launcher.returncode != 0 and took < 60
    # torchrun's report names the process that died and how.
    assert "rank      : 1 (local_rank: 1)" in stderr and "SIGKILL" in stderr, stderr
    # The survivor either was stopped by torchrun or saw its peer go: never gen's own traceback.
    assert "[rank0]: Traceback" not in stderr and "core/training/loop.py" not in stderr, stderr
    for pid in ranks.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_nan_loss_in_one_process_stops_every_process(corpus, tmp_path):
    """The loss checked is the global batch's, the same on every process, so a NaN in
    one process's share stops them all at the same step with gen's error (none waits
    for the others in a collective), and the last good checkpoint is kept."""
    script = tmp_path / "misbehave.py"
    script.write_text(MISBEHAVE)
    started = time.monotonic()
    completed = torchrun("train", "--data", corpus, "--out", "out", *TINY, "--batch-size", 8, "--max-iters", 40,
                         "--eval-interval", 12, cwd=tmp_path, script=(script,), env={"GEN_TEST_NAN_FROM": "13"},
                         check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0 and time.monotonic() - started < 120, output
    # the window of the training loss closes 10 steps after the evaluation at step 12
    assert "the training loss became nan at step 22: training diverged; the last good checkpoint (step 12)" \
        in output, output
    assert "lost the others" not in output and "Traceback" not in completed.stdout, output
    assert json.loads((tmp_path / "out" / "latest" / "config.json").read_text())["step"] == 12


def test_ctrl_c_under_torchrun_saves_nothing_and_resumes_from_the_last_evaluation(corpus, tmp_path):
    """Ctrl-C reaches the processes at different points and a checkpoint is a collective
    (every process's random states): a distributed run writes none then, instead of
    hanging, and says where --resume continues."""
    script = tmp_path / "misbehave.py"
    script.write_text(MISBEHAVE)
    options = ["--data", corpus, *TINY, "--batch-size", 8, "--max-iters", 10, "--eval-interval", 5]
    started = time.monotonic()
    interrupted = torchrun("train", "--out", "out", *options, cwd=tmp_path, script=(script,),
                           env={"GEN_TEST_CTRL_C_AT": "7"}, check=False)
    output = interrupted.stdout + interrupted.stderr
    assert interrupted.returncode != 0 and time.monotonic() - started < 120, output
    assert ("interrupted at step 7; a distributed run saves no checkpoint when interrupted: it resumes from "
            f"its last evaluation's, step 5 in {Path('out') / 'latest'}") in interrupted.stdout, output
    assert json.loads((tmp_path / "out" / "latest" / "config.json").read_text())["step"] == 5
    resumed = torchrun("train", "--out", "out", "--resume", cwd=tmp_path)
    assert "resuming 'out' at step 5" in resumed.stdout
    assert json.loads((tmp_path / "out" / "latest" / "config.json").read_text())["step"] == 10


def test_compile_where_attention_is_not_the_math_kernel():
    """torch.compile is lazy, so this only builds the wrapper: it once failed right here
    for float32 and for CUDA (an import inside compile_model shadowed `torch`)."""
    from gen.core.training.loop import compile_model

    model = torch.nn.Linear(2, 2)
    compiled = compile_model(model, torch.device("cpu"), torch.float32)
    assert compiled is not model


def test_accumulation_averages_gradients_only_on_the_last_micro_step(corpus, monkeypatch):
    """A process group of one, in this process (as torchrun --nproc_per_node 1 makes):
    DDP's communication hook counts the gradient all-reduces of two steps of 3 micro-steps."""
    import socket

    from gen.core.training.checkpoint import build_model
    from gen.core.data import load_dataset
    from gen.core.training.distributed import Distributed
    from gen.core.training.loop import Trainer
    from gen.core.training.config import TrainConfig

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in dict(RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port).items():
        monkeypatch.setenv(name, str(value))
    distributed = Distributed.from_environment()
    distributed.start(torch.device("cpu"))
    try:
        dataset = load_dataset(str(corpus), tokenizer_spec="char", progress=False)
        model = build_model("gpt", dict(vocab_size=dataset.tokenizer.vocab_size, block_size=16, n_layer=1,
                                        n_head=2, n_embd=16))
        config = TrainConfig(batch_size=4, grad_accum=3, device="cpu", dtype="float32")
        trainer = Trainer(config, dataset, model, torch.device("cpu"), torch.float32, distributed)
        all_reduced_at = []

        def count(state, bucket):  # DDP's default hook would all-reduce bucket.buffer() here
            all_reduced_at.append(trainer.step)
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        trainer.ddp.register_comm_hook(None, count)
        for _ in range(2):
            trainer.train_step()
        trainer.config.grad_accum = 1  # a step without accumulation: how many buckets one all-reduce takes
        trainer.train_step()
    finally:
        distributed.close()
    buckets = all_reduced_at.count(2)
    assert buckets >= 1 and all_reduced_at == [0] * buckets + [1] * buckets + [2] * buckets  # not per micro-step


def test_a_process_whose_process_0_never_comes_says_so_and_fails_in_one_line(corpus, tmp_path):
    """Process 1 of 2, with nobody listening at MASTER_ADDR:MASTER_PORT: a line saying what it
    waits for, then, after GEN_DISTRIBUTED_TIMEOUT, one line naming the address (no hang, no traceback)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = dict(os.environ, RANK="1", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), GEN_DISTRIBUTED_TIMEOUT="3")
    gen_binary = os.path.join(os.path.dirname(sys.executable), "gen")
    started = time.monotonic()
    result = subprocess.run([gen_binary, "train", "--data", str(corpus), "--out", str(tmp_path / "out"), *TINY,
                             "--max-iters", "2"], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 60
    assert f"process 1: waiting up to 3 s for process 0 at 127.0.0.1:{port}" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"could not join the run at 127.0.0.1:{port} within 3 s" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
