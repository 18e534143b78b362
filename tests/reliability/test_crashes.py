"""A training run killed at any moment loses nothing: SIGKILL at five moments (a step,
an evaluation, half-way through writing a checkpoint, between the two renames that
put it in place, just after it), and Ctrl-C, each followed by `gen train --resume`,
ends with weights bit-identical to a run that was never interrupted."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest
from reliability_helpers import TINY, gen

from gen.core.training.checkpoint import BEST, LATEST

# Runs `gen` with a plugin that interrupts the run at one moment, in a process of its own.
DRIVER = r'''
import os, signal, sys

from gen.core import hookimpl
from gen.core.registry import get_plugins

moment, at = sys.argv[1], int(sys.argv[2])
# Ctrl-C as at a terminal, even when the tests run in a background job, whose children
# inherit SIGINT ignored (then Python installs no handler and the signal would do nothing).
signal.signal(signal.SIGINT, signal.default_int_handler)
kill = lambda: os.kill(os.getpid(), signal.SIGINT if moment == "ctrl-c" else signal.SIGKILL)


class Interrupter:
    @hookimpl
    def on_eval(self, step, metrics):
        if moment == "evaluation" and step == at:
            kill()

    @hookimpl
    def on_checkpoint(self, step, path):
        if moment == "after-checkpoint" and step == at and path.endswith("latest"):
            kill()


if moment in ("step", "ctrl-c"):
    from gen.core.training import loop as train

    train_step = train.Trainer.train_step

    def interrupted_step(self):
        if self.step == at:
            kill()
        return train_step(self)

    train.Trainer.train_step = interrupted_step
if moment in ("batch", "optimizer", "evaluation-batch"):  # Ctrl-C at the at-th call, inside a step or an evaluation
    import torch

    from gen.core.training import loop as train

    calls = [0]

    def interrupt_at_call(function):
        def interrupted(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGINT)
            return function(*args, **kwargs)
        return interrupted

    if moment == "batch":  # while a step draws its micro-batches: counts the training batches alone
        sample = train.BatchSampler.sample

        def training_sample(self, generator):
            return (interrupt_at_call(sample) if torch.is_grad_enabled() else sample)(self, generator)

        train.BatchSampler.sample = training_sample
    elif moment == "optimizer":  # the gradients taken, the weights not yet updated
        torch.optim.AdamW.step = interrupt_at_call(torch.optim.AdamW.step)
    else:  # in the middle of an evaluation, between its batches
        sample = train.BatchSampler.sample

        def evaluation_sample(self, generator):
            if not torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] == at:
                    os.kill(os.getpid(), signal.SIGINT)
            return sample(self, generator)

        train.BatchSampler.sample = evaluation_sample
if moment == "checkpoint-write":  # the weights written, the training state half-way
    import safetensors.torch

    save_file = safetensors.torch.save_file

    def interrupted_save(tensors, filename, *args, **kwargs):
        if filename.endswith("training_state.safetensors") and "/.latest.new-" in filename:
            with open(filename, "wb") as file:
                file.write(b"half")
            if at_step[0] == at:
                kill()
        return save_file(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = interrupted_save
if moment == "between-renames":  # the old latest/ moved aside, the new one not yet in place
    rename = os.rename

    def interrupted_rename(source, target):
        rename(source, target)
        if str(target).split("/")[-1].startswith(".latest.old-") and at_step[0] == at:
            kill()

    os.rename = interrupted_rename

at_step = [0]


class StepTracker:
    @hookimpl
    def on_eval(self, step, metrics):
        at_step[0] = step


get_plugins().register(Interrupter(), "interrupter")
get_plugins().register(StepTracker(), "step-tracker")
from gen.core.cli import cli

cli(sys.argv[3:])
'''

MAX_ITERS = 16
MOMENTS = [("step", 10), ("evaluation", 12), ("checkpoint-write", 12), ("between-renames", 12),
           ("after-checkpoint", 12)]


def train_command(workspace, out):
    return ["train", "--data", str(workspace / "corpus.txt"), "--out", str(out), *TINY,
            "--max-iters", str(MAX_ITERS), "--eval-interval", "4", "--dropout", "0.1"]


def gen_process(*arguments, driver=None):
    command = [sys.executable, "-c", DRIVER, *driver, *arguments] if driver else \
        [sys.executable, "-c", "from gen.core.cli import main; main()", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    result = gen(*train_command(workspace, out))  # in-process: only the interrupted runs need their own
    assert result.exit_code == 0, result.output
    return (out / LATEST / "model.safetensors").read_bytes()


@pytest.mark.parametrize("moment, at", MOMENTS, ids=[moment for moment, _ in MOMENTS])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(workspace, tmp_path, uninterrupted, moment, at):
    out = tmp_path / "run"
    killed = gen_process(*train_command(workspace, out), driver=[moment, str(at)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = gen("train", "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert (out / LATEST / "model.safetensors").read_bytes() == uninterrupted
    leftovers = [path.name for path in out.iterdir() if path.name.startswith(".")]
    assert leftovers == []  # the killed write's temporary and aside folders are gone


def test_ctrl_c_saves_the_step_it_reached_and_says_how_to_resume(workspace, tmp_path, uninterrupted):
    out = tmp_path / "run"
    interrupted = gen_process(*train_command(workspace, out), driver=["ctrl-c", "10"])
    assert interrupted.returncode == 130, interrupted.stderr
    assert f"interrupted at step 10; saved {out / LATEST}; continue with: gen train --out {out} --resume" \
        in interrupted.stdout
    assert "Traceback" not in interrupted.stderr and "Aborted" not in interrupted.stderr
    resumed = gen("train", "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "at step 10" in resumed.output
    assert (out / LATEST / "model.safetensors").read_bytes() == uninterrupted


def random_moments(seeds: range) -> list[tuple[str, int]]:
    """Ctrl-C at random calls: of the batch sampler (2 micro-batches a step, and the
    evaluations' batches), of the optimizer's step, of an evaluation's batches."""
    moments = []
    for seed in seeds:
        chooser = random.Random(seed)
        kind = ("batch", "optimizer", "evaluation-batch")[seed % 3]
        if kind == "batch":  # the second micro-batch of a step: the first one is drawn
            moments.append((kind, 2 * chooser.randint(1, MAX_ITERS)))
        else:  # the optimizer of steps 2 to 16; a batch of the evaluations at 4, 8, 12, 16 (4 each)
            moments.append((kind, chooser.randint(2, MAX_ITERS) if kind == "optimizer" else chooser.randint(5, 20)))
    return moments


@pytest.fixture(scope="module")
def uninterrupted_accumulating(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight-accumulating") / "run"
    result = gen(*train_command(workspace, out), "--grad-accum", "2")
    assert result.exit_code == 0, result.output
    return {name: (out / name / "model.safetensors").read_bytes() for name in (LATEST, BEST)}, \
        [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("moment, at", random_moments(range(6)))
def test_ctrl_c_at_any_moment_then_resume_gives_the_uninterrupted_run(workspace, tmp_path, uninterrupted_accumulating,
                                                                      moment, at):
    """Ctrl-C inside a step (while it draws a batch, before its weights update) or in an
    evaluation, then --resume: the same latest and best weights, and the same evaluations."""
    weights, evaluated_steps = uninterrupted_accumulating
    out = tmp_path / "run"
    interrupted = gen_process(*train_command(workspace, out), "--grad-accum", "2", driver=[moment, str(at)])
    assert interrupted.returncode in (0, 130), interrupted.stderr  # 0: the chosen call came after the run
    assert "Traceback" not in interrupted.stderr
    resumed = gen("train", "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    for name in (LATEST, BEST):
        assert (out / name / "model.safetensors").read_bytes() == weights[name], name
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == evaluated_steps


def test_a_killed_exports_temporary_is_removed_by_the_next_export(workspace, tmp_path):
    stale = tmp_path / ".model.onnx.new-999999999-abcd.tmp"  # a pid no process has
    stale.write_bytes(b"half an export")
    completed = gen_process("export", str(tmp_path / "model.onnx"), "--checkpoint", str(workspace / "run"),
                            "--no-verify")
    assert completed.returncode == 0, completed.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]
    assert os.path.getsize(tmp_path / "model.onnx") > 1000
