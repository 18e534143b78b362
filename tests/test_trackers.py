"""Experiment trackers (gen.core.tracking): a tracker registered in-process receives what
metrics.jsonl receives, unknown names are refused with the list, and the TensorBoard
tracker writes event files that TensorBoard itself reads back."""
import json
import sys
from pathlib import Path

import pytest

from gen.core import hookimpl
from gen.core.registry import get_plugins
from gen.core.tracking import Tracker
from cli_helpers import gen

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--eval-iters", "2", "--warmup-iters", "5", "--device", "cpu", "--max-iters", "20",
        "--eval-interval", "10", "--log-interval", "5"]
pytestmark = pytest.mark.usefixtures("module_cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    return path


class Recorder(Tracker):
    """A tracker for these tests: it keeps every call, in order, in a class-wide list."""

    calls: list = []

    def __init__(self, label: str = "recorder"):
        self.label = label

    def start(self, run_info):
        Recorder.calls.append(("start", self.label, run_info))

    def log(self, step, metrics):
        Recorder.calls.append(("log", step, dict(metrics)))

    def checkpoint(self, step, path):
        Recorder.calls.append(("checkpoint", step, Path(path).name))

    def finish(self):
        Recorder.calls.append(("finish",))


class RecorderPlugin:
    @hookimpl
    def register_trackers(self, register):
        register("recorder", Recorder)


def metrics_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_tracker_registered_in_process_receives_the_runs_metrics(fresh_plugins, corpus, tmp_path):
    get_plugins().register(RecorderPlugin(), "recorder-plugin")
    Recorder.calls = []
    out = tmp_path / "out"
    result = gen("train", "--data", corpus, "--out", out, *TINY, "--tracker", "recorder:label=mine")
    assert result.exit_code == 0, result.output

    kinds = [call[0] for call in Recorder.calls]
    assert kinds[0] == "start" and kinds[-1] == "finish" and kinds.count("finish") == 1, kinds
    _, label, run_info = Recorder.calls[0]
    assert label == "mine"
    assert run_info["out"] == str(out) and run_info["start_step"] == 0 and run_info["first_step"] == 0
    assert run_info["config"]["model_config"]["n_embd"] == 32 and run_info["config"]["max_iters"] == 20
    logged = [(call[1], call[2]) for call in Recorder.calls if call[0] == "log"]
    # every line of metrics.jsonl, in order: evaluations at 0, 10, 20 and the --log-interval windows
    assert [metrics for _, metrics in logged] == metrics_lines(out)
    assert [step for step, _ in logged] == [0, 5, 10, 10, 15, 20, 20]
    assert [call[1:] for call in Recorder.calls if call[0] == "checkpoint"] == [
        (10, "latest"), (10, "best"), (20, "latest"), (20, "best")]

    # resumed further: the tracker hears where the run continues and the new lines only
    Recorder.calls = []
    result = gen("train", "--data", corpus, "--out", out, *TINY, "--resume", "--max-iters", "30",
                 "--tracker", "recorder")
    assert result.exit_code == 0, result.output
    run_info = Recorder.calls[0][2]
    assert (run_info["start_step"], run_info["first_step"]) == (20, 21)
    assert [call[1] for call in Recorder.calls if call[0] == "log"] == [25, 30, 30]
    assert [line["step"] for line in metrics_lines(out)] == [0, 5, 10, 10, 15, 20, 20, 25, 30, 30]


def test_an_unknown_tracker_is_a_one_line_error_with_the_known_ones(corpus, tmp_path):
    result = gen("train", "--data", corpus, "--out", tmp_path / "out", *TINY, "--tracker", "wandb")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: unknown tracker 'wandb'; known trackers: jsonl, tensorboard"], result.output
    assert not (tmp_path / "out").exists()


def test_the_tensorboard_tracker_without_its_package_says_how_to_install_it(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were absent
    result = gen("train", "--data", corpus, "--out", tmp_path / "out", *TINY, "--tracker", "tensorboard")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: --tracker tensorboard needs the tensorboard package: pip install 'gen[tensorboard]' "
        "(or pip install tensorboard)"], result.output


def test_the_tensorboard_tracker_writes_events_tensorboard_reads_back(corpus, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'gen[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    result = gen("train", "--data", corpus, "--out", out, *TINY, "--tracker", "tensorboard")
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    lines = metrics_lines(out)
    for name in ("val_loss", "train_loss", "interval_train_loss", "tokens_per_s"):
        expected = [(line["step"], line[name]) for line in lines if name in line]
        read = [(event.step, event.value) for event in events.Scalars(name)]
        assert [step for step, _ in read] == [step for step, _ in expected], name
        # (stored as float32)
        assert [value for _, value in read] == pytest.approx([value for _, value in expected], rel=1e-6), name
