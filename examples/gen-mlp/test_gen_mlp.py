"""Tests for the plugin, in-process: `pytest examples/gen-mlp` from gen's repository.

The package is registered with gen in the test process, as if it were installed, and
gen's CLI runs through click's CliRunner on a small Shakespeare corpus. The user cache
(tokenizers and encoded corpora) goes to a temporary directory.
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import gen_mlp
from gen.core.cli import cli
from gen.core.registry import get_plugins, reset_plugins
from gen.runtime import OnnxModel
from gen_mlp.model import MLP, PAD_ID

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "tinyshakespeare-excerpt.txt"
PROMPT = "ROMEO:"
GREEDY = ["--prompt", PROMPT, "--sampler", "greedy", "--max-new-tokens", "80", "--seed", "0"]
# A model small enough to train in about a second on two CPU cores.
SMALL_MODEL = "mlp:context=4,hidden=64"
TRAIN = ["--max-iters", "40", "--eval-interval", "20", "--eval-iters", "5", "--batch-size", "8", "--seed", "1"]


def gen(*args):
    """Run `gen ARGS...` in-process and return its result, failing on a non-zero exit."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory holding a copy of the corpus, with gen-mlp registered and the user
    cache inside the directory, for the tests of this module."""
    directory = tmp_path_factory.mktemp("gen-mlp")
    shutil.copyfile(CORPUS, directory / "corpus.txt")
    reset_plugins()
    plugins = get_plugins()
    if not plugins.is_registered(gen_mlp):  # already loaded when the package is installed
        plugins.register(gen_mlp, "gen-mlp")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("XDG_CACHE_HOME", str(directory / "cache"))
        yield directory
    reset_plugins()  # the next module starts from the installed plugins only


@pytest.fixture(scope="module")
def trained(work):
    """The run directory of a small MLP trained for 40 steps (shared: training is the slow part)."""
    gen("train", "--model", SMALL_MODEL, "--data", work / "corpus.txt", "--out", work / "run", *TRAIN)
    return work / "run"


def test_gen_plugins_lists_mlp_with_its_options(work):
    lines = gen("plugins").output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.split()[:3] == ["model", "mlp", "gen-mlp"])
    options = lines[row + 1]  # the options are listed on the line below the model
    for option in ("block_size (int=64)", "context (int=8)", "n_embd (int=32)", "hidden (int=256)"):
        assert option in options
    assert "vocab_size" not in options  # set by gen from the tokenizer, not a user option


def test_training_brings_the_loss_below_the_uniform_baseline(work, trained):
    corpus = (work / "corpus.txt").read_text(encoding="utf-8")
    uniform = math.log(len(set(corpus)))  # the char tokenizer: one token per distinct character
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line for line in lines if "val_loss" in line]  # not the --log-interval lines
    assert [e["step"] for e in evaluations] == [0, 20, 40]
    first, last = evaluations[0], evaluations[-1]
    # Small output weights at initialisation: the first predictions are near uniform.
    assert abs(first["val_loss"] - uniform) < 0.1
    assert last["train_loss"] < first["train_loss"]
    assert last["val_loss"] < uniform - 1.0  # about 2.7 against ln(59) = 4.08


@pytest.mark.parametrize("model, message", [
    ("mlp:context=0", "mlp context must be between 1 and block_size (64), got context=0"),
    ("mlp:context=65", "mlp context must be between 1 and block_size (64), got context=65"),
    ("mlp:hidden=0", "mlp hidden must be at least 1, got hidden=0"),
    ("mlp:nonsense=1", "unknown option 'nonsense' for model 'mlp'; accepted options: block_size (int=64), "
                       "context (int=8), n_embd (int=32), hidden (int=256)"),
    ("mlp:context=abc", "model 'mlp' option context='abc' is not a valid int"),
])
def test_a_bad_option_is_a_one_line_error(work, model, message):
    result = CliRunner().invoke(cli, ["train", "--model", model, "--data", str(work / "corpus.txt"),
                                      "--out", str(work / "bad"), "--max-iters", "1"])
    assert result.exit_code != 0
    # A SystemExit is click reporting the error; any other exception would be a crash,
    # which CliRunner catches (so "Traceback" alone could never show up in its output).
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    assert result.output.splitlines() == [result.output.splitlines()[0]]
    assert result.output.startswith(f"Error: {message}")
    assert not (work / "bad").exists()


def test_sample_and_the_export_give_the_same_greedy_text(work, trained):
    sampled = gen("sample", "--checkpoint", trained, *GREEDY).stdout
    gen("export", work / "mlp.onnx", "--checkpoint", trained)  # verifies onnxruntime against torch too
    ran = gen("run", work / "mlp.onnx", *GREEDY).stdout
    assert ran == sampled
    assert sampled.startswith(PROMPT) and len(sampled) > len(PROMPT) + 50

    # A batch of prompts of different lengths is left-padded with token 0, which is
    # what the model fills its window with before a sequence starts: so every row of
    # the batch continues exactly as its prompt alone.
    generator = OnnxModel(work / "mlp.onnx")
    prompts = [PROMPT, "A", "First Citizen:\nBefore we proceed any further"]
    batch = generator.generate(prompts, sampler="greedy", max_new_tokens=40)
    alone = [generator.generate([prompt], sampler="greedy", max_new_tokens=40)[0] for prompt in prompts]
    assert batch == alone


def test_the_hook_module_imports_without_torch():
    # gen imports the hook module in every environment, the torch-free runtime included.
    check = "import sys, gen_mlp; assert 'torch' not in sys.modules, 'gen_mlp imported torch'"
    result = subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


VOCAB = 11


def tiny_mlp(context: int) -> MLP:
    torch.manual_seed(0)
    return MLP.from_config({"vocab_size": VOCAB, "block_size": 24, "context": context, "n_embd": 4, "hidden": 8}).eval()


def logits_of(model, tokens):
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens], dtype=torch.int64))
    return logits[0]  # (T, vocab)


tokens_strategy = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=16)


@settings(max_examples=50, deadline=None)
@given(context=st.integers(1, 6), tokens=tokens_strategy, data=st.data())
def test_logits_at_t_do_not_depend_on_later_tokens(context, tokens, data):
    model = tiny_mlp(context)
    t = data.draw(st.integers(0, len(tokens) - 1), label="t")
    # Every token after t replaced by a different one.
    changed = tokens[:t + 1] + [(token + 1) % VOCAB for token in tokens[t + 1:]]
    torch.testing.assert_close(logits_of(model, changed)[:t + 1], logits_of(model, tokens)[:t + 1],
                               rtol=0, atol=1e-6)
    # ...while the token at t itself does matter (the test above would pass for a model
    # that ignores its input).
    changed_at_t = tokens[:t] + [(tokens[t] + 1) % VOCAB] + tokens[t + 1:]
    assert not torch.allclose(logits_of(model, changed_at_t)[t], logits_of(model, tokens)[t])


@settings(max_examples=50, deadline=None)
@given(context=st.integers(1, 6), tokens=tokens_strategy, padding=st.integers(1, 8))
def test_left_padding_with_token_0_changes_no_logits(context, tokens, padding):
    # No absolute positions: the same tokens give the same logits wherever they stand,
    # and the window before the sequence holds PAD_ID, the id gen pads batches with.
    model = tiny_mlp(context)
    padded = [PAD_ID] * padding + tokens
    torch.testing.assert_close(logits_of(model, padded)[padding:], logits_of(model, tokens), rtol=0, atol=1e-5)
