"""Experiment trackers: where a `gen train` run's metrics go (no torch).

A tracker is a class registered by a plugin's `register_trackers` hook and named with
`gen train --tracker NAME[:KEY=VALUE,...]` (its options are its `__init__` keywords, as
a sampler's are). Process 0 of a run builds one of each, then calls, in this order:

- `start(run_info)` once, before the first step. `run_info` is a dict: `out` (the run
  directory, a str), `config` (the run's options, the model's configuration, device,
  dtype and world size: what `on_train_start` gets), `start_step` (0, or the step a
  resumed run continues from) and `first_step`, the step of the first metrics this run
  logs: a tracker that kept an earlier run's metrics drops those from `first_step` on,
  which the resumed run logs again.
- `log(step, metrics)` for every metrics line, as it is measured: an evaluation
  (`train_loss`, `val_loss`, `lr`, `tokens`, `elapsed_s`, `tokens_per_s`, ...) or every
  `--log-interval` steps the training loss of those steps (`interval_train_loss`,
  `elapsed_s`, `tokens_per_s`). A line with a `val_loss` is an evaluation.
- `checkpoint(step, path)` after each checkpoint folder is written (latest/, best/).
- `finish()` once, when the run ends, also when it fails or is interrupted.

The JSON-lines tracker (`jsonl`, below) writes the run directory's metrics.jsonl, which
`gen plot`, `gen info` and `--resume` read: every run has it, whatever `--tracker` adds.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gen.core.errors import GenError
from gen.core.reading import SIZE_LIMITS, parse_json, read_text
from gen.core.registry import get_registry
from gen.core.specs import call_with_options, convert_options, describe_options, parse_spec

METRICS_FILE = "metrics.jsonl"


class Tracker:
    """The contract of an experiment tracker; a subclass overrides what it needs."""

    def start(self, run_info: dict) -> None:
        """The run begins (see the module docstring for `run_info`)."""

    def log(self, step: int, metrics: dict) -> None:
        """One metrics line, at `step`."""

    def checkpoint(self, step: int, path: str) -> None:
        """A checkpoint folder was written at `step`."""

    def finish(self) -> None:
        """The run ended (completed, failed or interrupted)."""


def build_trackers(specs: Sequence[str]) -> list[Tracker]:
    """The trackers of a run: `jsonl`, then each `--tracker NAME[:KEY=VALUE,...]` (a name
    given twice counts once). An unknown name is a GenError listing the known ones."""
    registry = get_registry()
    trackers, names = [], set()
    for spec in ("jsonl", *specs):
        name, options = parse_spec(spec, "tracker")
        if name in names:
            continue
        names.add(name)
        entry = registry.entry("tracker", name)
        accepted = entry.options()
        typed = convert_options(options, accepted, f"tracker {name!r}")
        trackers.append(call_with_options(entry.load(), typed, f"tracker {name!r}", describe_options(accepted)))
    return trackers


class JsonLinesTracker(Tracker):
    """metrics.jsonl in the run directory: one JSON object a line."""

    def __init__(self):
        self.path: Path | None = None
        self.first_step = 0
        self.pending: list[dict] = []
        self.started_file = False

    def start(self, run_info: dict) -> None:
        self.path = Path(run_info["out"]) / METRICS_FILE
        self.first_step = run_info["first_step"]

    def log(self, step: int, metrics: dict) -> None:
        self.pending.append(metrics)

    def checkpoint(self, step: int, path: str) -> None:
        # The file is only touched once this run has written a checkpoint, so an
        # interrupted --overwrite run leaves the earlier run's checkpoints and log consistent;
        # lines measured after the last checkpoint are not written (a resume measures them again).
        if not self.started_file:
            self._keep_earlier_lines()
            self.started_file = True
        with open(self.path, "a", encoding="utf-8") as file:
            file.writelines(json.dumps(metrics) + "\n" for metrics in self.pending)
        self.pending = []

    def _keep_earlier_lines(self) -> None:
        """Start the file afresh, keeping an earlier run's lines before `first_step` (a resume)."""
        kept = []
        if self.first_step > 0 and self.path.exists():
            for line in read_text(self.path, "metrics log", SIZE_LIMITS["metrics log"]).splitlines():
                try:
                    entry = parse_json(line, "a line")
                except GenError:
                    continue  # a damaged line: the resumed run writes its own
                step = entry.get("step", 0) if isinstance(entry, dict) else None
                if isinstance(step, int) and step < self.first_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
