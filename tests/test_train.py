"""`gen train`, `gen sample` and `gen eval` end to end: short real runs of a tiny model
on a slice of Tiny Shakespeare, exact reproducibility and resuming, the plugin hooks,
and bad input (a one-line error, a non-zero exit, nothing already written destroyed)."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen.core import hookimpl
from gen.core.registry import get_plugins
from gen.core.training.config import TrainConfig
from cli_helpers import StopAtStep, gen

GEN_SCRIPT = Path(sys.executable).parent / "gen"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--eval-iters", "4", "--warmup-iters", "5"]
pytestmark = pytest.mark.usefixtures("module_cache")  # before the module-scoped runs below


def train(corpus, out, *arguments, max_iters=40, eval_interval=20):
    result = gen("train", "--data", corpus, "--out", out, *TINY, "--max-iters", max_iters,
                 "--eval-interval", eval_interval, *arguments)
    assert result.exit_code == 0, result.output
    return result


def metrics(out: Path) -> list[dict]:
    """The evaluation lines (the --log-interval lines have no val_loss)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "val_loss" in line]


def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def assert_one_line_error(result, *fragments):
    """A clean failure: exit status 1 from click, one `Error:` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A run of 60 steps, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("trained") / "out"
    train(corpus, out, max_iters=60, eval_interval=30)
    return out


# --- training ---------------------------------------------------------------------


def test_loss_starts_near_uniform_and_falls(trained):
    logged = metrics(trained)
    assert [entry["step"] for entry in logged] == [0, 30, 60]
    first, last = logged[0], logged[-1]
    vocab_size = json.loads((trained / "best" / "config.json").read_text())["model"]["config"]["vocab_size"]
    assert first["uniform_loss"] == pytest.approx(math.log(vocab_size))
    assert abs(first["val_loss"] - math.log(vocab_size)) < 0.3
    assert last["train_loss"] < first["train_loss"] - 0.8
    assert last["val_loss"] < first["val_loss"] - 0.8


def test_step_zero_prints_the_uniform_baseline(corpus, tmp_path):
    result = train(corpus, tmp_path / "out", max_iters=1, eval_interval=1)
    assert "step 0: train loss" in result.output and "uniform baseline ln(" in result.output


def test_run_directory_holds_latest_best_and_metrics(trained):
    assert sorted(p.name for p in trained.iterdir()) == ["best", "latest", "metrics.jsonl"]
    latest = json.loads((trained / "latest" / "config.json").read_text())
    assert latest["step"] == 60 and latest["model"]["name"] == "gpt"
    assert latest["tokenizer"]["name"] == "char"
    assert latest["train_args"]["max_iters"] == 60 and "resume" not in latest["train_args"]
    best_loss = min(entry["val_loss"] for entry in metrics(trained)[1:])
    assert json.loads((trained / "best" / "config.json").read_text())["val_loss"] == best_loss


def test_the_same_seed_gives_bit_identical_weights(corpus, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(corpus, tmp_path / name, "--seed", seed, "--dropout", "0.1", max_iters=15, eval_interval=15)
    a, b, c = (weights(tmp_path / name / "latest") for name in "abc")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)  # the seed matters



def test_resume_continues_bit_for_bit(corpus, tmp_path):
    options = ["--dropout", "0.1", "--grad-accum", "2"]  # dropout: the global RNG must resume too
    train(corpus, tmp_path / "straight", *options, max_iters=40, eval_interval=10)

    stopper = StopAtStep(20)
    get_plugins().register(stopper, "stop-at-20")
    try:
        result = train(corpus, tmp_path / "resumed", *options, max_iters=40, eval_interval=10)
    finally:
        get_plugins().unregister(stopper)
    assert "stopped early at step 20" in result.output
    assert json.loads((tmp_path / "resumed" / "latest" / "config.json").read_text())["step"] == 20

    result = gen("train", "--out", tmp_path / "resumed", "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    straight, resumed = weights(tmp_path / "straight" / "latest"), weights(tmp_path / "resumed" / "latest")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    assert [m["step"] for m in metrics(tmp_path / "resumed")] == [0, 10, 20, 30, 40]
    resumed_losses = [m["val_loss"] for m in metrics(tmp_path / "resumed")]
    assert resumed_losses == [m["val_loss"] for m in metrics(tmp_path / "straight")]


def test_resume_refuses_to_change_the_model(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    assert_one_line_error(gen("train", "--out", out, "--resume", "--n-embd", "64"), "--n-embd 64 differs")
    # Restating what the run already is, here the gpt's default dropout that it never set, is no change.
    result = gen("train", "--out", out, "--resume", "--dropout", "0", "--max-iters", "60")
    assert result.exit_code == 0, result.output
    assert_one_line_error(gen("train", "--out", tmp_path / "nothing", "--resume"), "nothing to resume")


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def on_train_start(self, config):
        self.events.append(("start", config["max_iters"], config["model_config"]["n_embd"]))

    @hookimpl
    def on_eval(self, step, metrics):
        self.events.append(("eval", step, sorted(metrics)))

    @hookimpl
    def on_checkpoint(self, step, path):
        self.events.append(("checkpoint", step, Path(path).name))


def test_training_calls_the_plugin_hooks(corpus, tmp_path):
    recorder = Recorder()
    get_plugins().register(recorder, "recorder")
    try:
        train(corpus, tmp_path / "out", max_iters=4, eval_interval=2)
    finally:
        get_plugins().unregister(recorder)
    keys = ["elapsed_s", "lr", "step", "tokens", "tokens_per_s", "train_loss", "val_loss"]
    assert recorder.events[0] == ("start", 4, 32)
    assert recorder.events[1] == ("eval", 0, sorted(keys + ["uniform_loss"]))
    assert [event for event in recorder.events if event[0] == "checkpoint"][0][:2] == ("checkpoint", 2)
    assert ("eval", 4, sorted(keys + ["batch_loss"])) in recorder.events  # the loss of step 4's batch
    assert {event[2] for event in recorder.events if event[0] == "checkpoint"} <= {"latest", "best"}


def test_bigram_trains(corpus, tmp_path):
    out = tmp_path / "out"
    result = gen("train", "--model", "bigram", "--data", corpus, "--out", out, "--block-size", "16",
                 "--max-iters", "60", "--eval-interval", "30", "--lr", "0.02")
    assert result.exit_code == 0, result.output
    logged = metrics(out)
    assert logged[-1]["val_loss"] < logged[0]["val_loss"] - 0.5
    saved = json.loads((out / "best" / "config.json").read_text())
    vocab_size = len(saved["tokenizer"]["state"]["characters"])
    assert saved["model"] == {"name": "bigram", "config": {"vocab_size": vocab_size, "block_size": 16}}


def test_options_from_a_toml_file_with_the_command_line_winning(corpus, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{corpus}"\nmax-iters = 3\neval_interval = 3\nn_embd = 16\nn-head = 2\n'
                      f'n_layer = 1\nblock_size = 16\nbatch_size = 4\nlr = 0.01\n')
    result = gen("train", "--config", config, "--out", tmp_path / "out", "--lr", "0.005")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "latest" / "config.json").read_text())
    assert saved["train_args"]["max_iters"] == 3 and saved["train_args"]["lr"] == 0.005
    assert saved["model"]["config"]["n_embd"] == 16


def test_model_options_in_the_model_spec(corpus, tmp_path):
    out = tmp_path / "out"
    train(corpus, out, "--model", "gpt:bias=true,dropout=0.1", max_iters=4, eval_interval=4)
    saved = json.loads((out / "latest" / "config.json").read_text())
    assert saved["model"]["config"]["bias"] is True and saved["model"]["config"]["dropout"] == 0.1
    assert saved["model"]["config"]["n_embd"] == 32  # --n-embd from TINY, a shortcut for gpt's n_embd
    assert saved["train_args"]["model"] == "gpt:bias=true,dropout=0.1"


def test_model_options_from_a_toml_table(corpus, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{corpus}"\nmax_iters = 2\neval_interval = 2\nbatch_size = 4\n\n'
                      f'[model]\nname = "gpt"\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 8\n')
    result = gen("train", "--config", config, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "latest" / "config.json").read_text())
    assert {key: saved["model"]["config"][key] for key in ("n_layer", "n_head", "n_embd", "block_size")} == {
        "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8}


@pytest.mark.parametrize("arguments, fragments", [
    (["--model", "gpt:n_layers=2"], ["unknown option 'n_layers' for model 'gpt'", "accepted options: block_size (int=64)"]),
    (["--model", "gpt:n_layer=two"], ["model 'gpt' option n_layer='two' is not a valid int"]),
    (["--model", "gpt:n_layer=2", "--n-layer", "3"], ["--n-layer 3 contradicts --model 'gpt:n_layer=2'"]),
    (["--model", "gpt:n_layer"], ["malformed model spec 'gpt:n_layer'"]),
    (["--model", "gpt:n_layer=0"], ["gpt n_layer must be from 1 to 1,024, got 0"]),
    (["--model", "nonesuch"], ["unknown model 'nonesuch'; known models: bigram, gpt"]),
])
def test_bad_model_specs_are_one_line_errors(corpus, tmp_path, arguments, fragments):
    result = gen("train", "--data", corpus, "--out", tmp_path / "out", *arguments)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_the_bigram_brings_its_own_learning_rate(corpus, tmp_path):
    def trained_lr(*arguments, config_text=None):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        extra = []
        if config_text is not None:
            config = tmp_path / "bigram.toml"
            config.write_text(config_text)
            extra = ["--config", config]
        result = gen("train", "--model", "bigram", "--data", corpus, "--out", out, "--max-iters", "2",
                     "--eval-interval", "2", *extra, *arguments)
        assert result.exit_code == 0, result.output
        return json.loads((out / "latest" / "config.json").read_text())["train_args"]["lr"]

    assert trained_lr() == 0.1  # BigramLanguageModel.training_defaults
    assert trained_lr("--lr", "0.05") == 0.05  # the command line wins
    assert trained_lr(config_text="lr = 0.02\n") == 0.02  # and so does the config file


def test_train_help_lists_every_model_with_its_options():
    result = gen("train", "--help")
    assert result.exit_code == 0, result.output
    assert "bigram: block_size (int=64)" in result.output
    assert "gpt: block_size (int=64), n_layer (int=4), n_head (int=4), n_embd (int=128)," in result.output


def test_train_help_gives_the_learning_rate_one_default_and_lists_the_models_own():
    output = gen("train", "--help").output
    lr_help = " ".join(output.split("  --lr ")[1].split("  --min-lr ")[0].split())
    assert re.findall(r"default:? [0-9.]+", lr_help) == [f"default: {TrainConfig.lr}"], lr_help
    assert "bigram: block_size (int=64); trains by default with --lr 0.1" in output  # its training_defaults
    assert "trains by default" not in output.split("  gpt: ")[1]


# --- sample and eval ----------------------------------------------------------------


def test_sample_is_deterministic_for_a_seed(trained):
    arguments = ["sample", "--checkpoint", trained, "--prompt", "ROMEO:", "--max-new-tokens", 80]
    first = gen(*arguments, "--seed", 3, "--num-samples", 2)
    again = gen(*arguments, "--seed", 3, "--num-samples", 2)
    other = gen(*arguments, "--seed", 4, "--num-samples", 2)
    assert first.exit_code == 0, first.output
    assert first.output == again.output != other.output
    samples = first.output.split("\n---------------\n")
    assert len(samples) == 3 and samples[2] == ""  # each sample ends with the separator line
    assert all(sample.startswith("ROMEO:") and len(sample) == len("ROMEO:") + 80 for sample in samples[:2])
    assert samples[0] != samples[1]  # one random stream runs on from sample to sample


def test_sample_with_and_without_the_cache_agree_within_the_block(trained):
    arguments = ["sample", "--checkpoint", trained, "--sampler", "greedy", "--max-new-tokens", 20]
    cached, uncached = gen(*arguments), gen(*arguments, "--no-cache")
    assert cached.exit_code == 0 and cached.output == uncached.output


def test_sample_stops_at_a_stop_string(trained):
    result = gen("sample", "--checkpoint", trained, "--seed", 1, "--max-new-tokens", 300, "--stop", "\n\n")
    assert result.exit_code == 0
    assert "\n\n" not in result.output.removeprefix("\n").split("\n---------------")[0]


def test_eval_scores_the_validation_split_exactly(trained):
    result = gen("eval", "--checkpoint", trained, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "val" and report["tokens"] == 4_000 - 1  # 10% of 40,000 char tokens
    assert report["bits_per_token"] == pytest.approx(report["loss"] / math.log(2))
    assert report["bits_per_character"] == pytest.approx(report["bits_per_token"])  # one char per token
    estimated = json.loads((trained / "best" / "config.json").read_text())["val_loss"]
    assert abs(report["loss"] - estimated) < 0.25  # the exact loss is near the training estimate
    train_report = json.loads(gen("eval", trained, "--split", "train", "--json").stdout)
    assert train_report["tokens"] == 36_000 - 1 and train_report["loss"] < report["loss"]
    text = gen("eval", "--checkpoint", trained)
    assert "nats/token" in text.output and "bits/char" in text.output


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b"Too short a corpus for a block of 32.\n" * 2, "fewer than block_size + 1"),
])
def test_bad_corpus(tmp_path, content, fragment):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    assert_one_line_error(gen("train", "--data", corpus, "--out", tmp_path / "out", *TINY), fragment)
    assert not (tmp_path / "out").exists()


def test_n_embd_not_divisible_by_n_head(corpus, tmp_path):
    result = gen("train", "--data", corpus, "--out", tmp_path / "out", "--n-embd", "30", "--n-head", "4")
    assert_one_line_error(result, "divisible")


def test_options_the_model_does_not_take(corpus, tmp_path):
    result = gen("train", "--model", "bigram", "--data", corpus, "--out", tmp_path / "out", "--n-layer", "2")
    assert_one_line_error(result, "bigram", "--n-layer")


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml")),
                         ids=lambda path: path.name)
def test_example_recipes_hold_only_known_options(recipe):
    from gen.core.cli.commands import _options_from_file, train_command

    options = _options_from_file(str(recipe), train_command, click.Context(train_command))
    assert options and "max_iters" in options


def test_unknown_key_in_the_config_file(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("learning_rate = 0.1\n")
    assert_one_line_error(gen("train", "--config", config), "unknown option 'learning_rate'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(corpus, tmp_path):
    result = gen("train", "--data", corpus, "--out", tmp_path / "out", "--device", "cuda")
    assert_one_line_error(result, "CUDA is not available")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(gen("sample", "--checkpoint", tmp_path / "nowhere"), "does not exist")
    assert_one_line_error(gen("eval", "--checkpoint", tmp_path / "nowhere"), "does not exist")


@pytest.mark.parametrize("file, content, fragment", [
    ("model.safetensors", b"garbage" * 100, "model.safetensors"),
    ("config.json", b"{garbage", "config.json"),
    ("config.json", None, "unknown model 'no-such-model'"),
])
def test_damaged_or_foreign_checkpoint(trained, tmp_path, file, content, fragment):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    for checkpoint in ("best", "latest"):
        target = out / checkpoint / file
        if content is None:
            config = json.loads(target.read_text())
            config["model"]["name"] = "no-such-model"
            target.write_text(json.dumps(config))
        else:
            target.write_bytes(content)
    assert_one_line_error(gen("sample", "--checkpoint", out), fragment)
    assert_one_line_error(gen("eval", "--checkpoint", out), fragment)


def test_prompt_the_tokenizer_cannot_encode(trained):
    assert_one_line_error(gen("sample", "--checkpoint", trained, "--prompt", "naïve ☃"), "cannot encode the prompt")


def test_an_existing_run_is_never_destroyed(trained, corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_one_line_error(gen("train", "--data", corpus, "--out", out, *TINY), "already holds a run", "--resume")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(gen("train", "--data", empty, "--out", out, "--overwrite"), "is empty")
    assert_one_line_error(gen("train", "--data", corpus, "--out", out, "--overwrite", "--n-embd", "30"), "divisible")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_gen_command_prints_one_line_without_a_traceback(tmp_path):
    """The real console script, in a process of its own."""
    completed = subprocess.run([str(GEN_SCRIPT), "sample", "--checkpoint", str(tmp_path / "nowhere")],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().startswith("Error: no checkpoint") and completed.stderr.count("\n") == 1


def test_eval_of_an_export_matches_its_checkpoint(trained, corpus, tmp_path):
    """`gen eval MODEL.onnx --data ...` scores the same split as the checkpoint it came from."""
    from gen.export.onnx_export import ExportOptions, export_onnx

    path = tmp_path / "model.onnx"
    export_onnx(trained, path, options=ExportOptions(verify=False, progress=None))
    from_checkpoint = json.loads(gen("eval", "--checkpoint", trained, "--json").stdout)
    result = gen("eval", path, "--data", corpus, "--json")
    assert result.exit_code == 0, result.output
    from_export = json.loads(result.stdout)
    assert from_export["tokens"] == from_checkpoint["tokens"]
    assert from_export["loss"] == pytest.approx(from_checkpoint["loss"], abs=1e-4)
    assert_one_line_error(gen("eval", path), "--data")


def test_a_model_whose_training_defaults_have_the_wrong_type_is_a_one_line_error(corpus, tmp_path, fresh_plugins):
    from gen.core import hookimpl
    from gen.plugins.bigram import BigramLanguageModel

    class Careless(BigramLanguageModel):
        training_defaults = {"lr": "fast"}

    class CarelessPlugin:
        @hookimpl
        def register_models(self, register):
            register("careless", Careless)

    get_plugins().register(CarelessPlugin(), "gen-careless")
    result = gen("train", "--model", "careless", "--data", corpus, "--out", tmp_path / "out", "--max-iters", "2")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "model 'careless''s training_defaults" in result.output and "lr" in result.output.splitlines()[-1]


def test_training_logs_a_line_every_log_interval_steps_and_records_it(corpus, tmp_path):
    out = tmp_path / "out"
    result = train(corpus, out, "--log-interval", 5, max_iters=20, eval_interval=10)
    # CliRunner's output is not a terminal: a line per window instead of the progress bar
    logged = [line for line in result.output.splitlines() if line.startswith("step ") and "tokens/s" in line]
    assert [line.split(":")[0] for line in logged] == ["step 5", "step 10", "step 15", "step 20"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [line for line in lines if "interval_train_loss" in line]
    assert [line["step"] for line in windows] == [5, 10, 15, 20]
    assert all(math.isfinite(line["interval_train_loss"]) and line["tokens_per_s"] > 0 for line in windows)
    assert [line["step"] for line in lines] == sorted(line["step"] for line in lines)  # in the order of the run
    assert [line["step"] for line in metrics(out)] == [0, 10, 20]  # the evaluations are as before


def test_plot_draws_the_training_windows(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from gen.core.cli.plot import plot_run

    def light_blue_pixels(lines):
        run = tmp_path / f"run{len(lines)}"
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        image = imread(plot_run(run))
        blended = np.array([0.649, 0.787, 0.882])  # the train colour at alpha 0.4 on white
        return int((np.abs(image[:, :, :3] - blended).max(axis=-1) < 0.06).sum())

    evaluations = [{"step": 0, "train_loss": 4.0, "val_loss": 4.1}, {"step": 100, "train_loss": 2.0, "val_loss": 2.2}]
    windows = [{"step": step, "interval_train_loss": 4.0 - step / 50 + (step % 20) / 10} for step in range(10, 101, 10)]
    assert light_blue_pixels(sorted(evaluations + windows, key=lambda line: line["step"])) > \
        light_blue_pixels(evaluations) + 200
