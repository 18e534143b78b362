"""Built-in experiment trackers: `jsonl` (metrics.jsonl, every run has it) and
`tensorboard` (the `tensorboard` extra). The contract is gen.core.tracking.Tracker.

TensorBoard's writer comes with torch (`torch.utils.tensorboard`, which needs the
tensorboard package); it is imported when the tracker is built, before the first step,
so a missing package stops the run at once with the line that installs it.
"""
from __future__ import annotations

from pathlib import Path

from gen.core import GenError, hookimpl
from gen.core.tracking import JsonLinesTracker, Tracker


class TensorBoardTracker(Tracker):
    """TensorBoard event files in the run directory's tb/ (tensorboard --logdir OUT/tb)."""

    def __init__(self, log_dir: str = ""):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GenError("--tracker tensorboard needs the tensorboard package: "
                           "pip install 'gen[tensorboard]' (or pip install tensorboard)") from None
        self.summary_writer = SummaryWriter
        self.log_dir = log_dir
        self.writer = None

    def start(self, run_info: dict) -> None:
        log_dir = self.log_dir or str(Path(run_info["out"]) / "tb")
        # purge_step: a resumed run hides the earlier run's events from the step it logs again
        purge = run_info["first_step"] if run_info["first_step"] > 0 else None
        self.writer = self.summary_writer(log_dir=log_dir, purge_step=purge)

    def log(self, step: int, metrics: dict) -> None:
        for name, value in metrics.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, global_step=step)

    def checkpoint(self, step: int, path: str) -> None:
        self.writer.flush()  # what was logged so far is on disk with the checkpoint

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()


@hookimpl
def register_trackers(register):
    register("jsonl", JsonLinesTracker, description="metrics.jsonl in the run directory (always on)")
    register("tensorboard", TensorBoardTracker)
