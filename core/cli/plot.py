"""`gen plot`: a run's loss curves, from its metrics.jsonl, drawn to a PNG (no torch).

The picture: the training and validation losses at every evaluation, the training
loss of every --log-interval window (metrics.jsonl's lines without a val_loss), the uniform
baseline ln(vocab) (what a model that knows nothing scores) as a dashed line, the best
checkpoint (the lowest validation loss) as a star, and the learning rate on a second axis. The learning rate is the schedule of the run's
options, read from its latest checkpoint, at every step; without a checkpoint it
is the rate recorded at each evaluation.

matplotlib is the `plot` extra (`pip install 'gen[plot]'`), imported only here and
only when a plot is drawn. The figure is rendered with matplotlib's Agg canvas
directly, so no GUI backend or display is involved.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import msgspec

from gen.core.training.checkpoint import LATEST, METRICS_FILE, is_checkpoint, read_config
from gen.core.errors import GenError
from gen.core.files import replace_file_atomically
from gen.core.reading import json_lines, validate
from gen.core.training.config import check_config, learning_rate, train_config_from_dict

PLOT_FILE = "loss.png"
COLOURS = {"train": "#1f77b4", "val": "#d62728", "uniform": "#7f7f7f", "lr": "#2ca02c", "best": "#ffd166"}
SIZE_INCHES, DPI = (8, 4.5), 100  # 800 x 450 pixels
MAX_LR_POINTS = 100_000  # the learning rate curve of a longer run is drawn at this many steps


class Evaluation(msgspec.Struct):
    """What gen plot reads of a metrics.jsonl line (other fields are left alone)."""

    step: Annotated[int, msgspec.Meta(ge=0)]
    train_loss: float
    val_loss: float
    lr: float | None = None
    uniform_loss: float | None = None


class TrainingWindow(msgspec.Struct):
    """What gen plot reads of a --log-interval line of metrics.jsonl (other fields are left alone)."""

    step: Annotated[int, msgspec.Meta(ge=0)]
    interval_train_loss: float


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The evaluations in a run directory's metrics.jsonl, in order of step."""
    return [entry for entry in read_metric_lines(run_dir) if "val_loss" in entry]


def read_metric_lines(run_dir: str | os.PathLike) -> list[dict]:
    """Every line of a run directory's metrics.jsonl, in order of step: evaluations (step,
    train_loss, val_loss, ...) and, between them, training windows (step, interval_train_loss, ...)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        if not Path(run_dir).is_dir():
            raise GenError(f"{str(run_dir)!r} does not exist; give the --out directory of a gen train run")
        raise GenError(f"{str(run_dir)!r} has no {METRICS_FILE}; give the --out directory of a gen train run")
    metrics = []
    for number, entry in json_lines(path, "metrics log"):
        is_window = isinstance(entry, dict) and "step" in entry and "interval_train_loss" in entry
        if not is_window and not (isinstance(entry, dict)
                                  and all(key in entry for key in ("step", "train_loss", "val_loss"))):
            raise GenError(f"{path} is damaged: line {number} lacks step, train_loss or val_loss")
        validate(entry, TrainingWindow if is_window else Evaluation, f"{path}: line {number}")
        metrics.append(entry)
    if not any("val_loss" in entry for entry in metrics):
        raise GenError(f"{path} is empty: the run has not evaluated yet")
    return sorted(metrics, key=lambda entry: entry["step"])


def _run_options(run_dir: Path) -> tuple[object | None, int | None]:
    """The latest checkpoint's training options (a TrainConfig) and vocabulary size, if it has one."""
    latest = run_dir / LATEST
    if not is_checkpoint(latest):
        return None, None
    config = read_config(latest)
    try:
        options = train_config_from_dict(config["train_args"], str(latest))
        check_config(options)  # a schedule no run could have (a damaged file) is not drawn
    except (GenError, TypeError):
        options = None  # options of another gen version: fall back to the recorded rates
    vocab_size = config["model"]["config"].get("vocab_size")
    valid = isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and vocab_size >= 1
    return options, vocab_size if valid else None


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draw the run's curves to `output` (default RUN_DIR/loss.png); returns the path written."""
    run_dir = Path(run_dir)
    lines = read_metric_lines(run_dir)
    metrics = [entry for entry in lines if "val_loss" in entry]
    windows = [entry for entry in lines if "interval_train_loss" in entry]
    options, vocab_size = _run_options(run_dir)
    steps = [entry["step"] for entry in metrics]
    uniform = next((entry["uniform_loss"] for entry in metrics if "uniform_loss" in entry), None)
    if uniform is None and vocab_size:
        uniform = math.log(vocab_size)
    if options is not None:
        # every step, or evenly spaced ones for a run longer than a plot has pixels for
        lr_steps = list(range(0, steps[-1] + 1, max(1, steps[-1] // MAX_LR_POINTS)))
        lr_values = [learning_rate(step, options) for step in lr_steps]
    else:
        lr_steps = [entry["step"] for entry in metrics if "lr" in entry]
        lr_values = [entry["lr"] for entry in metrics if "lr" in entry]
    output = Path(output) if output is not None else run_dir / PLOT_FILE
    _render(run_dir.resolve().name, metrics, windows, uniform, lr_steps, lr_values, output)
    return output


def check_matplotlib() -> None:
    """GenError, saying what to install, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise GenError("plotting needs matplotlib: pip install 'gen[plot]' (or pip install matplotlib)") from None


def _render(title: str, metrics: list[dict], windows: list[dict], uniform: float | None, lr_steps: list,
            lr_values: list, output: Path) -> None:
    check_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [entry["step"] for entry in metrics]
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if windows:
        axes.plot([entry["step"] for entry in windows], [entry["interval_train_loss"] for entry in windows],
                  color=COLOURS["train"], linewidth=1, alpha=0.4, label="training loss (per window)")
    axes.plot(steps, [entry["train_loss"] for entry in metrics], color=COLOURS["train"], linewidth=2,
              marker="o", markersize=3, label="train loss")
    axes.plot(steps, [entry["val_loss"] for entry in metrics], color=COLOURS["val"], linewidth=2,
              marker="o", markersize=3, label="validation loss")
    if uniform is not None:
        axes.axhline(uniform, color=COLOURS["uniform"], linestyle="--", linewidth=1.5,
                     label=f"uniform baseline ln(vocab) = {uniform:.2f}")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per token)")
    axes.grid(alpha=0.3)
    if lr_values:
        lr_axes = axes.twinx()
        lr_axes.plot(lr_steps, lr_values, color=COLOURS["lr"], linewidth=1.5, label="learning rate")
        lr_axes.set_ylabel("learning rate", color=COLOURS["lr"])
        lr_axes.set_ylim(bottom=0)
        lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        more_handles, more_labels = lr_axes.get_legend_handles_labels()
    best = min(metrics, key=lambda entry: entry["val_loss"])
    # The best checkpoint (the one a run directory's `best` holds): its point on the validation curve.
    axes.plot([best["step"]], [best["val_loss"]], linestyle="none", marker="*", markersize=14,
              markerfacecolor=COLOURS["best"], markeredgecolor="#1d2330", label="best checkpoint", zorder=5)
    axes.annotate(f"best {best['val_loss']:.3f}", (best["step"], best["val_loss"]), textcoords="offset points",
                  xytext=(-10, 10), ha="right", fontsize=9)  # above and to the left: inside the axes at the end
    handles, labels = axes.get_legend_handles_labels()
    if lr_values:
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(handles, labels, loc="center right")  # by then the losses and the rate are low
    axes.set_title(f"{title}: best validation loss {best['val_loss']:.4f} at step {best['step']}")
    figure.tight_layout()
    with replace_file_atomically(output) as temporary:
        figure.savefig(temporary, format="png")
