"""`gen plot` and `gen train --plot` (the PNG has the curves: its size, and pixels of
each curve's colour), and `gen info` on a checkpoint, a run directory and exports,
checked against what torch and onnx read from the same files, without torch."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from matplotlib.image import imread

from gen.core.cli.plot import COLOURS, DPI, SIZE_INCHES
from cli_helpers import gen, assert_one_line_error

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--eval-iters", "2", "--warmup-iters", "5", "--device", "cpu"]
pytestmark = pytest.mark.usefixtures("module_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run of 40 steps, trained with --plot."""
    work = tmp_path_factory.mktemp("run")
    corpus = work / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    result = gen("train", "--data", corpus, "--out", work / "out", *TINY, "--max-iters", 40,
                 "--eval-interval", 10, "--plot")
    assert result.exit_code == 0, result.output
    assert f"wrote {work / 'out' / 'loss.png'}" in result.output
    return work / "out"


@pytest.fixture(scope="module")
def exports(run) -> dict:
    paths = {kind: run.parent / f"model.{kind}.onnx" for kind in ("fp32", "int8", "int4")}
    for kind, path in paths.items():
        result = gen("export", path, "--checkpoint", run, "--no-verify", *(["--quantize", kind] if kind != "fp32" else []))
        assert result.exit_code == 0, result.output
    return paths


# --- gen plot ---------------------------------------------------------------------------


def colour_pixels(image: np.ndarray, colour: str, tolerance: float = 0.12) -> int:
    """How many pixels are within `tolerance` (per channel, 0-1) of `colour` ("#rrggbb")."""
    target = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[:, :, :3] - target).max(axis=-1) < tolerance).sum())


def write_metrics(run_dir: Path, lines: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def synthetic_metrics(with_lr: bool = True) -> list[dict]:
    lines = []
    for step in range(0, 1001, 100):
        line = {"step": step, "train_loss": 4.2 - 2.2 * math.sqrt(step / 1000),
                "val_loss": 4.2 - 2.0 * math.sqrt(step / 1000)}
        if with_lr:
            line["lr"] = 3e-3 * (1 + math.cos(math.pi * step / 1000)) / 2
        lines.append(line)
    lines[0]["uniform_loss"] = math.log(65)
    return lines


def test_plot_draws_both_curves_the_baseline_and_the_learning_rate(tmp_path):
    write_metrics(tmp_path / "out", synthetic_metrics())
    result = gen("plot", tmp_path / "out")
    assert result.exit_code == 0, result.output
    image = imread(tmp_path / "out" / "loss.png")
    assert image.shape[:2] == (SIZE_INCHES[1] * DPI, SIZE_INCHES[0] * DPI)
    assert (image[:, :, :3] < 0.9).mean() > 0.02  # not blank
    # A curve across the axes is hundreds of pixels; its legend sample alone about 60.
    for name in ("train", "val", "uniform", "lr"):
        assert colour_pixels(image, COLOURS[name]) > 400, name


def test_without_learning_rates_no_learning_rate_curve_is_drawn(tmp_path):
    """The colour count tells a drawn curve from none (the test above could not pass blank)."""
    write_metrics(tmp_path / "out", synthetic_metrics(with_lr=False))
    output = tmp_path / "elsewhere.png"
    result = gen("plot", tmp_path / "out", "--output", output)
    assert result.exit_code == 0, result.output
    image = imread(output)
    assert colour_pixels(image, COLOURS["lr"]) < 20
    assert colour_pixels(image, COLOURS["train"]) > 400


def test_train_plot_writes_the_runs_curves_with_its_schedule(run):
    image = imread(run / "loss.png")
    assert image.shape[:2] == (SIZE_INCHES[1] * DPI, SIZE_INCHES[0] * DPI)
    for name in ("train", "val", "uniform", "lr"):
        assert colour_pixels(image, COLOURS[name]) > 400, name


@pytest.mark.parametrize("content, fragment", [
    (None, "has no metrics.jsonl"),
    ("", "is empty"),
    ('{"step": 0}\n', "lacks step, train_loss or val_loss"),
    ("not json\n", "line 1 is not JSON"),
])
def test_plot_of_a_directory_without_good_metrics_is_a_one_line_error(tmp_path, content, fragment):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    assert_one_line_error(gen("plot", tmp_path), fragment)
    assert not (tmp_path / "loss.png").exists()


def test_without_matplotlib_plotting_says_what_to_install(tmp_path):
    write_metrics(tmp_path, synthetic_metrics())
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from click.testing import CliRunner\n"
        "from gen.core.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['plot', {str(tmp_path)!r}])\n"
        "print(result.exit_code, result.output)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("1 Error: plotting needs matplotlib: pip install 'gen[plot]'"), result.stdout + result.stderr


# --- gen info ---------------------------------------------------------------------------


def info(path) -> dict:
    result = gen("info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_info_of_a_fixed_capacity_export_says_so(run, tmp_path):
    path = tmp_path / "static.onnx"
    assert gen("export", path, "--checkpoint", run, "--no-verify", "--static-cache").exit_code == 0
    assert info(path)["kv_cache"] == {"n_layer": 1, "n_head": 2, "head_size": 16, "capacity": 32}
    text = gen("info", path).output
    assert "x 16, a fixed capacity of 32 positions updated in place (--static-cache)" in text


def test_info_of_a_checkpoint_matches_what_torch_loads(run):
    from gen.core.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run / "best")
    described = info(run / "best")
    assert described["kind"] == "checkpoint"
    assert described["model"] == {"name": "gpt", "config": checkpoint.model_config}
    assert described["parameters"] == sum(p.numel() for p in checkpoint.model.parameters())
    assert described["tokenizer"] == {"name": "char", "vocab_size": checkpoint.tokenizer.vocab_size}
    assert described["block_size"] == 32
    assert (described["step"], described["val_loss"], described["best_val_loss"]) == (
        checkpoint.step, checkpoint.val_loss, checkpoint.best_val_loss)
    assert described["size_bytes"] == sum(f.stat().st_size for f in (run / "best").iterdir())
    assert described["resumable"] is True

    text = gen("info", run / "best").output
    assert f"{described['parameters']:,}" in text and f"step {checkpoint.step}" in text
    assert f"validation loss {checkpoint.val_loss:.4f}" in text


def test_info_of_a_run_directory_describes_its_best_checkpoint_and_the_run(run):
    described = info(run)
    assert described["path"] == str(run / "best")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert described["run"]["evaluations"] == len([line for line in lines if "val_loss" in line]) == 5
    assert described["run"]["latest_step"] == 40
    assert gen("info", run).output.startswith(f"{run}: a gen train run directory")


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
def test_info_of_an_export_matches_onnx_and_its_checkpoint(run, exports, kind):
    path = exports[kind]
    described = info(path)
    checkpoint = info(run / "best")
    proto = onnx.load(str(path))
    assert described["kind"] == "export"
    assert described["opset"] == next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    assert described["quantization"] == (None if kind == "fp32" else kind)
    assert described["kv_cache"] == {"n_layer": 1, "n_head": 2, "head_size": 16}
    for key in ("parameters", "tokenizer", "block_size", "step", "val_loss", "best_val_loss"):
        assert described[key] == checkpoint[key], key
    assert described["model"]["config"] == checkpoint["model"]["config"]
    assert described["size_bytes"] == path.stat().st_size
    float_weights = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == 1 and t.dims)
    assert described["graph_weights"].get("float32", 0) == float_weights
    text = gen("info", path).output
    assert ("quantization  none" in text) == (kind == "fp32")
    assert (f"quantization  {kind}" in text) == (kind != "fp32")
    assert "KV cache      yes: 1 layer x 2 heads x 16" in text
    # Why the weights are not the parameters: the tied head stored again, and constants.
    extra = sum(described["graph_weights"].values()) - described["parameters"]
    explained = f"the graph stores {extra:,} numbers more (a tied output head again, transposed"
    assert (explained in text) == (kind == "fp32"), text
    if kind == "fp32":  # gpt's tied head (vocab x n_embd) is among them
        vocab_size, n_embd = described["tokenizer"]["vocab_size"], described["model"]["config"]["n_embd"]
        assert extra >= vocab_size * n_embd


def test_info_lists_a_models_options_in_one_order_for_a_checkpoint_and_its_export(run, exports):
    """A checkpoint keeps the model's own order of options and an export's metadata
    another; gen info prints both by name, so the two model lines are the same."""
    def model_line(path):
        return next(line.split(None, 1)[1] for line in gen("info", path).output.splitlines()
                    if line.strip().startswith("model "))

    assert model_line(run / "best") == model_line(exports["fp32"])
    options = model_line(run / "best").split(": ", 1)[1].split(", ")
    assert options == sorted(options) and len(options) > 3, options


def test_info_of_a_model_without_a_cache(tmp_path):
    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model
    from gen.plugins.bigram import BigramLanguageModel
    from gen.plugins.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train("abcdef")
    model = BigramLanguageModel.from_config({"vocab_size": 6, "block_size": 8})
    export_model(model, tmp_path / "bigram.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(verify=False, progress=None))
    described = info(tmp_path / "bigram.onnx")
    assert described["kv_cache"] is None and described["parameters"] == 36
    assert described["step"] is None  # exported from a model in code: no checkpoint recorded
    assert "training      not recorded" in gen("info", tmp_path / "bigram.onnx").output


def test_info_reads_checkpoints_and_exports_without_torch(run, exports):
    script = (
        "import sys, json\n"
        "sys.modules['torch'] = None\n"
        "from click.testing import CliRunner\n"
        "from gen.core.cli import cli\n"
        f"for path in ({str(run)!r}, {str(exports['int8'])!r}):\n"
        "    result = CliRunner().invoke(cli, ['info', path, '--json'])\n"
        "    assert result.exit_code == 0, (result.output, repr(result.exception))\n"
        "    print(json.loads(result.output)['parameters'])\n"
        "assert sys.modules['torch'] is None and 'onnx' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = result.stdout.split()
    assert first == second == str(info(run)["parameters"])


def test_info_of_a_wrong_path_is_a_one_line_error(tmp_path):
    assert_one_line_error(gen("info", tmp_path / "missing"), "does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(gen("info", tmp_path / "notes.txt"), "is not an ONNX model")
    assert_one_line_error(gen("info", tmp_path), "no checkpoint in")
