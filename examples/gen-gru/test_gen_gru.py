"""Tests for the plugin, in-process: `pytest examples/gen-gru` from gen's repository.

The package is registered with gen in the test process, as if it were installed, and
gen's CLI runs through click's CliRunner on a small Shakespeare corpus. The model's
block_size is 16, so every generation here slides its window past it (the shared policy
prefills the last 8 tokens again, from a fresh state). The user cache (tokenizers and
encoded corpora) goes to a temporary directory.
"""
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import gen_gru
from gen.core import hookimpl
from gen.core.cli import cli
from gen.core.registry import get_plugins, reset_plugins
from gen.core.sampling import Sampling
from gen.runtime import OnnxModel
from gen.runtime.scheduler import Choice, Failed, Finished, Scheduler
from gen_gru.model import GRU

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "tinyshakespeare-excerpt.txt"
PROMPT = "ROMEO:"
SMALL_MODEL = "gru:block_size=16,n_embd=16,hidden=32,n_layer=2"
TRAIN = ["--max-iters", "30", "--eval-interval", "15", "--eval-iters", "4", "--batch-size", "8", "--seed", "1"]


def gen(*args):
    """Run `gen ARGS...` in-process and return its result, failing on a non-zero exit."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


class BlindGRU(GRU):
    """The GRU with a forward_cached that ignores attention_mask: the GRU runs over the padding too."""

    def forward_cached(self, input_ids, attention_mask, state):
        last = torch.full((input_ids.size(0), 1), input_ids.size(1) - 1, device=input_ids.device)
        x, h = self._layers(self.wte(input_ids), state["h"], last=last)
        return self.lm_head(x), {"h": h}


class BlindPlugin:
    """A plugin of this test only, registering BlindGRU as `blind_gru`."""

    @staticmethod
    @hookimpl
    def register_models(register):
        register("blind_gru", BlindGRU, description="A GRU that ignores attention_mask (a test's).")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory holding a copy of the corpus, with gen-gru (and the test's blind GRU)
    registered and the user cache inside the directory, for the tests of this module."""
    directory = tmp_path_factory.mktemp("gen-gru")
    shutil.copyfile(CORPUS, directory / "corpus.txt")
    reset_plugins()
    plugins = get_plugins()
    if not plugins.is_registered(gen_gru):  # already loaded when the package is installed
        plugins.register(gen_gru, "gen-gru")
    plugins.register(BlindPlugin, "blind-gru-test")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("XDG_CACHE_HOME", str(directory / "cache"))
        yield directory
    reset_plugins()  # the next module starts from the installed plugins only


@pytest.fixture(scope="module")
def trained(work):
    """The run directory of a small GRU trained for 30 steps with `gen train`."""
    gen("train", "--model", SMALL_MODEL, "--data", work / "corpus.txt", "--out", work / "run", *TRAIN)
    return work / "run"


@pytest.fixture(scope="module")
def exported(work, trained):
    """The trained GRU exported with `gen export` (which verifies it against torch)."""
    gen("export", work / "gru.onnx", "--checkpoint", trained)
    return work / "gru.onnx"


def test_gen_train_trains_it(trained):
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line for line in lines if "val_loss" in line]  # not the --log-interval lines
    assert [e["step"] for e in evaluations] == [0, 15, 30]
    assert evaluations[-1]["train_loss"] < evaluations[0]["train_loss"] - 0.3


def test_the_export_carries_a_fixed_size_state_and_gen_info_says_so(exported):
    text = gen("info", exported).output
    assert "  cache " in text and "state of h 2 x 32 per row (fixed size" in text
    assert "head" not in text and "KV cache" not in text
    described = json.loads(gen("info", exported, "--json").output)
    assert described["state"] == {"h": [2, 32]} and described["kv_cache"] is None
    model = OnnxModel(exported)
    inputs = {node.name: node.shape for node in model.session.get_inputs()}
    outputs = {node.name: node.shape for node in model.session.get_outputs()}
    assert inputs["past_state.h"] == outputs["present_state.h"] == ["batch", 2, 32]
    assert model.cache_kind == "state" and model.uses_cache


@pytest.mark.parametrize("sampler, seed", [("greedy", 0), ("multinomial", 7)])
def test_gen_run_gives_the_text_of_gen_sample_without_torch(work, trained, exported, sampler, seed):
    options = ["--prompt", PROMPT, "--sampler", sampler, "--max-new-tokens", "60", "--seed", seed]
    sampled = gen("sample", "--checkpoint", trained, *options).stdout
    ran = gen("run", exported, *options).stdout
    assert ran == sampled
    assert sampled.startswith(PROMPT) and len(sampled) > len(PROMPT) + 40
    # ...and onnxruntime alone, in a process that never imports torch.
    check = ("import sys; from gen.runtime import OnnxModel; "
             f"text = OnnxModel(sys.argv[1]).generate([{PROMPT!r}], sampler={sampler!r}, seed={seed}, "
             "max_new_tokens=60)[0]; assert 'torch' not in sys.modules; print(text, end='')")
    result = subprocess.run([sys.executable, "-c", check, str(exported)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sampled.startswith(PROMPT + result.stdout + "\n")  # gen sample then draws a rule under it


def test_a_left_padded_batch_gives_each_prompt_its_text_alone(exported):
    model = OnnxModel(exported)
    prompts = [PROMPT, "A", "First Citizen:\nBefore we proceed any further"]  # the last longer than block_size
    batch = model.generate(prompts, sampler="greedy", max_new_tokens=40)
    assert batch == [model.generate([prompt], sampler="greedy", max_new_tokens=40)[0] for prompt in prompts]


def test_the_scheduler_batches_rows_of_different_lengths_exactly(exported):
    """Rows of different lengths decode in one batch (their states side by side, their masks
    left-padded; free slots masked out); each text equals its prompt run alone with its seed."""
    model = OnnxModel(exported)
    scheduler = Scheduler(model, max_batch=4).start()
    jobs = []
    try:
        prompts = ["ROMEO:", "\n", "First Citizen:\nBefore we proceed", "a", "JULIET:", "Speak, speak."]
        for seed, prompt in enumerate(prompts):
            specs = ["greedy"] if seed % 2 else ["top_k:k=5"]
            max_tokens = 20 + 9 * seed  # rows finish at different steps; later ones take their slots
            done, texts = threading.Event(), []

            def deliver(event, texts=texts, done=done):
                assert not isinstance(event, Failed), event.message
                texts.append(event.text)
                if isinstance(event, Finished):
                    done.set()

            scheduler.submit([Choice(model.tokenizer.encode(prompt), Sampling(specs), seed, max_tokens)], deliver)
            jobs.append((prompt, specs, seed, max_tokens, done, texts))
        assert all(done.wait(60) for *_, done, _ in jobs)
    finally:
        scheduler.stop(timeout=30)
    assert scheduler.exact
    for prompt, specs, seed, max_tokens, _, texts in jobs:
        assert "".join(texts) == model.generate([prompt], sampler=specs, seed=seed, max_new_tokens=max_tokens)[0]


def test_gen_export_refuses_a_model_that_ignores_attention_mask_in_one_line(work):
    gen("train", "--model", "blind_gru:block_size=16,n_embd=8,hidden=16", "--data", work / "corpus.txt",
        "--out", work / "blind", "--max-iters", "2", "--eval-iters", "1", "--batch-size", "4")
    result = CliRunner().invoke(cli, ["export", str(work / "blind.onnx"), "--checkpoint", str(work / "blind")])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.exc_info
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0] == result.output.splitlines()[-1]
    assert error[0].startswith("Error: export refused: row ") and "of a left-padded batch (batch 3, length" in error[0]
    assert "the model ignores attention_mask" in error[0] and "honour attention_mask" in error[0]
    assert not (work / "blind.onnx").exists()


def test_the_hook_module_imports_without_torch():
    check = "import sys, gen_gru; assert 'torch' not in sys.modules, 'gen_gru imported torch'"
    result = subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
