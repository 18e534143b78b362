"""The training loop behind `gen train` (torch is imported here, and only when it runs).

The run's options and the learning rate schedule are in gen.core.training.config. Read
top to bottom: the device and precision, random batches, the `Trainer` (model,
optimizer and one training step), the `Run` (the run directory: evaluation,
checkpoints, metrics), `prepare_run` (options, data, model, resume) and `train`, the
loop itself.

Reproducibility: one seed fixes the weights' initialisation (torch's global RNG) and
the order of the training batches (a torch.Generator of its own). Both RNG states and
the optimizer state are saved in every checkpoint, so `--resume` continues exactly as
an uninterrupted run would: on the CPU the weights at step n are bit-identical.
Evaluation draws its batches from a third generator, seeded afresh at every evaluation,
so every evaluation measures the same batches and training never depends on it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from gen.core.training.checkpoint import (
    BEST,
    LATEST,
    Checkpoint,
    build_model,
    is_checkpoint,
    load_checkpoint,
    load_training_state,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from gen.core.data import Dataset, check_split_lengths, load_dataset
from gen.core.shards import ShardedTokens
from gen.core.training.devices import resolve_device, resolve_dtype, uses_math_attention
from gen.core.training.distributed import Distributed, is_collective_failure, processes
from gen.core.errors import GenError, first_line
from gen.core.files import check_writable_destination, recover_interrupted_replace
from gen.core.limits import check_fits
from gen.core.registry import get_plugins, get_registry
from gen.core.specs import parse_spec
from gen.core.tracking import Tracker, build_trackers
from gen.core.training.config import (
    CHANGEABLE_ON_FINE_TUNE,
    FIXED_ON_RESUME,
    MODEL_SHORTCUTS,
    NOT_SAVED,
    TrainConfig,
    check_config,
    given_options,
    learning_rate,
    model_spec,
    option_flag,
    train_config_from_dict,
    with_model_defaults,
)

def forward_context(device: torch.device, dtype: torch.dtype):
    """A context for the training and evaluation forwards: autocast, and the attention kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def context():
        stack = contextlib.ExitStack()
        if dtype != torch.float32:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
        if uses_math_attention(device, dtype):
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return stack

    return context


def compile_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    """torch.compile the model for training.

    torch's compile caches do not tell graphs apart by the attention kernel chosen
    with sdpa_kernel (seen with torch 2.13: a graph compiled with flash attention was
    reused under the math kernel, and ran at flash attention's speed). Where training
    picks the math kernel, those caches are off, so every run compiles afresh (about
    30 s on 2 CPU cores) and gets the right kernels.
    """
    if uses_math_attention(device, dtype):
        # (imported under other names: `import torch.x` here would make `torch` a local
        # name of this function, unbound where this branch is not taken)
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
    return torch.compile(model)


# --- batches --------------------------------------------------------------------------


class BatchSampler:
    """Random windows of block_size + 1 tokens from one split: inputs and their next tokens.

    In a run of several processes, each draws the starts of the whole global batch
    (world_size * batch_size) from the same generator and keeps its own rows, so
    together they draw exactly what one process with the global batch would.

    A split kept in token shards (gen.core.shards) is read from disk window by window,
    through np.memmap as nanoGPT reads train.bin; the starts are drawn alike, so the same
    tokens give the same batches from shards as from memory.
    """

    def __init__(self, ids: np.ndarray | ShardedTokens, block_size: int, batch_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        self.shards = ids if isinstance(ids, ShardedTokens) else None
        self.data = ids if self.shards else torch.from_numpy(np.asarray(ids, dtype=np.int64))  # (N,)
        self.offsets = torch.arange(block_size + 1)  # (T+1,)
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = device
        self.rows = slice(rank * batch_size, (rank + 1) * batch_size)  # this process's share
        self.global_batch_size = world_size * batch_size

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.data) - self.block_size, (self.global_batch_size,), generator=generator)
        starts = starts[self.rows]  # (B,)
        if self.shards is not None:
            windows = torch.from_numpy(self.shards.windows(starts.numpy(), self.block_size + 1))  # (B, T+1)
        else:
            windows = self.data[starts[:, None] + self.offsets]  # (B, T+1)
        inputs, targets = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T) each
        if self.device.type == "cuda":
            return (inputs.pin_memory().to(self.device, non_blocking=True),
                    targets.pin_memory().to(self.device, non_blocking=True))
        return inputs, targets


# --- the trainer ----------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2: linear and embedding weights) only.

    The fused implementation runs one kernel over all parameters instead of a handful
    of small ops per parameter: the fastest on a GPU, and a few percent faster than
    torch's default on 2 CPU cores, where it is not the default.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=config.lr, betas=(config.beta1, config.beta2), fused=True,
    )


class Trainer:
    """One run's model, optimizer, batches and random state, and its training step.

    In a run of several processes (gen.core.training.distributed) every process has a Trainer;
    `ddp` is then the model in DistributedDataParallel, and the losses it reports are
    means over the processes, so every process sees the same numbers.
    """

    def __init__(self, config: TrainConfig, dataset: Dataset, model: torch.nn.Module,
                 device: torch.device, dtype: torch.dtype, distributed: Distributed | None = None):
        self.config = config
        self.dataset = dataset
        self.device = device
        self.dtype = dtype
        self.distributed = distributed or Distributed()
        self.model = model.to(device).train()
        self.optimizer = make_optimizer(self.model, config)
        self.ddp = self.distributed.wrap(self.model, device)
        # torch.compile over the DDP wrapper, as torch advises: its DDPOptimizer then
        # splits the graph at DDP's gradient buckets so communication overlaps compute.
        trained = self.ddp or self.model
        self.forward = compile_model(trained, device, dtype) if config.compile else trained
        self.context = forward_context(device, dtype)
        self.block_size = model.config_dict()["block_size"]
        self.batches = {
            split: BatchSampler(dataset.split(split), self.block_size, config.batch_size, device,
                                self.distributed.rank, self.distributed.world_size)
            for split in ("train", "val")
        }
        self.batch_generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.last_loss: torch.Tensor | None = None  # the loss of the last step, logged as batch_loss
        # The global batch: every process's micro-batches of every micro-step.
        self.tokens_per_step = self.distributed.world_size * config.batch_size * self.block_size * config.grad_accum

    def train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches on every process; returns the
        step's loss, the mean over its whole global batch.

        A step is whole or not taken: Ctrl-C during it takes effect once it is done (see
        `finish_step_before_interrupt`), so the checkpoint an interrupt saves never holds
        a batch order, a random state or weights from half a step.
        """
        with finish_step_before_interrupt():
            return self._train_step()

    def _train_step(self) -> torch.Tensor:
        lr = learning_rate(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro_step in range(self.config.grad_accum):
            inputs, targets = self.batches["train"].sample(self.batch_generator)
            last = micro_step == self.config.grad_accum - 1
            with self.distributed.micro_step(self.ddp, synchronise=last):
                with self.context():
                    _, loss = self.forward(inputs, targets)
                (loss / self.config.grad_accum).backward()
            total += loss.detach().float()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.last_loss = self.distributed.mean(total / self.config.grad_accum)
        return self.last_loss

    @torch.no_grad()
    def estimate_losses(self) -> dict[str, float]:
        """Mean loss over eval_iters random batches of each split, the same batches every
        time; with several processes, over the global batches (the mean of the processes')."""
        self.model.eval()
        losses = {}
        for split, sampler in self.batches.items():
            generator = torch.Generator().manual_seed(self.config.seed + 1)
            total = torch.zeros((), device=self.device)
            for _ in range(self.config.eval_iters):
                inputs, targets = sampler.sample(generator)
                with self.context():
                    _, loss = self.model(inputs, targets)
                total += loss.float()
            losses[split] = self.distributed.mean(total).item() / self.config.eval_iters
        self.model.train()
        return losses

    def rng_states(self) -> dict[str, torch.Tensor]:
        """The random states a resume needs: the shared batch order, and each process's
        own global RNGs (dropout), process r's under "rank{r}." (process 0's unprefixed).

        Every process must call it: the states are gathered from all of them.
        """
        own = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        states = {"batches": self.batch_generator.get_state()}
        for name, state in own.items():
            for rank, gathered in enumerate(self.distributed.gather(state, self.device)):
                states[_rank_state_name(rank, name)] = gathered
        return states

    def restore(self, checkpoint_path: Path, step: int) -> None:
        """Continue from a checkpoint: its optimizer state, RNG states and step."""
        states = load_training_state(checkpoint_path, self.optimizer)
        rank = self.distributed.rank
        try:
            torch.set_rng_state(states[_rank_state_name(rank, "torch")])
            self.batch_generator.set_state(states["batches"])
            if self.device.type == "cuda" and _rank_state_name(rank, "cuda") in states:
                torch.cuda.set_rng_state(states[_rank_state_name(rank, "cuda")], self.device)
        except (KeyError, RuntimeError) as error:
            raise GenError(f"checkpoint {str(checkpoint_path)!r} has damaged random states ({error})") from None
        self.step = step


@contextlib.contextmanager
def finish_step_before_interrupt():
    """Hold back Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt.

    A training step draws batches (advancing the batch generator), draws dropout masks
    (advancing torch's RNG) and updates the weights and AdamW's moments. Interrupted in
    the middle, those would be saved out of step with each other, and a resume would
    differ from an uninterrupted run. A second Ctrl-C interrupts at once (for a step that
    never ends); the step is then torn, and `TornStep` says so.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    interrupted = []

    def hold_back(signum, frame):
        if interrupted:
            raise TornStep()
        interrupted.append(signum)

    previous = signal.signal(signal.SIGINT, hold_back)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


class TornStep(KeyboardInterrupt):
    """A second Ctrl-C in the middle of a training step: the step is half taken."""


def _rank_state_name(rank: int, name: str) -> str:
    """Process 0's states keep the names a single process gives them."""
    return name if rank == 0 else f"rank{rank}.{name}"


# --- the run --------------------------------------------------------------------------


@dataclass
class TrainResult:
    step: int
    best_val_loss: float | None
    out: Path
    metrics: list[dict]


def _config_for_resume(config: TrainConfig, given: set[str], latest: Path) -> TrainConfig:
    """The saved run's options, with those given now for this session (max_iters, ...)."""
    document = read_config(latest)
    values = {key: value for key, value in document["train_args"].items() if key not in NOT_SAVED}
    # What the run was: its options, and for the model shortcuts the model's actual config.
    recorded = {**values, **{key: document["model"]["config"].get(key) for key in MODEL_SHORTCUTS}}
    for key in given:
        value = getattr(config, key)
        # A value recorded as None is a default (a model shortcut's: the model's own), which
        # a given value does not contradict; but a run that was no fine-tune cannot become one.
        unset = recorded.get(key) is None and key != "init_from"
        if key in FIXED_ON_RESUME and not unset and recorded.get(key) != value:
            raise GenError(
                f"{option_flag(key)} {value} differs from the run being resumed ({recorded.get(key)}); "
                f"a resumed run keeps its model and data; leave the option out, or train anew into another --out"
            )
        values[key] = value
    values.update(resume=True, overwrite=False, out=config.out)
    return train_config_from_dict(values, f"the checkpoint {str(latest)!r}")


def _config_for_fine_tune(config: TrainConfig, given: set[str], start: Path) -> tuple[TrainConfig, dict]:
    """The options of a fine-tune of the checkpoint `start`, and the model options it changes.

    The model and the tokenizer are the checkpoint's. A model option given now must
    restate the checkpoint's value, except dropout (CHANGEABLE_ON_FINE_TUNE) and a smaller
    block size where the model can crop its positions (`crop_block_size`); anything that
    would change the model's shape or its tokens is refused. Training options are free.
    """
    document = read_config(start)
    model_name, model_config = document["model"]["name"], document["model"]["config"]
    keeps = f"a fine-tune keeps the model and tokenizer of --init-from {str(start)!r}"
    if "tokenizer" in given:
        raise GenError(f"--tokenizer {config.tokenizer}: {keeps}; leave the option out, or train anew without --init-from")
    if "model" in given and parse_spec(config.model, "model")[0] != model_name:
        raise GenError(f"--model {config.model}: {keeps} ({model_name}); leave the option out, "
                       f"or train anew without --init-from")
    config = dataclasses.replace(config, model=config.model if "model" in given else model_name,
                                 tokenizer=document["tokenizer"]["name"])
    _, options = model_spec(config)
    changes = {}
    for key, value in options.items():
        recorded = model_config.get(key)
        if value == recorded:
            continue
        can_crop = hasattr(get_registry().get("model", model_name), "crop_block_size")
        if key in CHANGEABLE_ON_FINE_TUNE or (key == "block_size" and can_crop and value < recorded):
            changes[key] = value
            continue
        shown = f"{option_flag(key)} {value}" if key in MODEL_SHORTCUTS else f"--model {model_name}:{key}={value}"
        learned = " (the positions it has learned)" if key == "block_size" else ""
        raise GenError(f"{shown}: the model of --init-from {str(start)!r} has {key} {recorded}{learned}; "
                       f"a fine-tune keeps the model's shape: leave the option out, or train anew without --init-from")
    return with_model_defaults(config, given), changes


def _model_for_fine_tune(start: Checkpoint, changes: dict) -> torch.nn.Module:
    """The model of `start` with the changes a fine-tune may make (see _config_for_fine_tune):
    dropout builds the same model with the new value and the same weights; a smaller block
    size crops it."""
    model = start.model
    rebuilt = {key: value for key, value in changes.items() if key != "block_size"}
    if rebuilt:
        model = build_model(start.model_name, {**start.model_config, **rebuilt})
        model.load_state_dict(start.model.state_dict())
    if "block_size" in changes:
        model.crop_block_size(changes["block_size"])
    return model


def _starting_point(start: Checkpoint) -> dict:
    """What a fine-tune records of where it started: the checkpoint, its step, and where
    that one came from in turn (an import's source, or its own starting point)."""
    document = read_config(start.path)
    point = {"path": str(start.path.resolve()), "step": start.step}
    for key in ("source", "init_from"):
        if document.get(key) is not None:
            point[key] = document[key]
    return point


def _check_out_dir(out: Path, config: TrainConfig) -> None:
    """Never overwrite an earlier run by accident, and find out now, not after minutes of
    training, if the run directory cannot be written."""
    check_writable_destination(out, "--out")
    if out.exists() and not out.is_dir():
        raise GenError(f"--out {str(out)!r} is a file; give a directory")
    _probe_writable(out)
    if config.resume:
        if not is_checkpoint(out / LATEST):
            raise GenError(f"nothing to resume in {str(out)!r}: it has no {LATEST}/ checkpoint; train without --resume")
        return
    earlier = [out / name for name in (LATEST, BEST) if is_checkpoint(out / name)]
    if earlier and not config.overwrite:
        step = read_config(earlier[0])["step"]
        raise GenError(
            f"{str(out)!r} already holds a run (step {step}); continue it with --resume, "
            f"start over with --overwrite, or choose another --out"
        )


def _probe_writable(out: Path) -> None:
    """Write and remove a file in `out`, creating it for the moment if needed."""
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        # Under torchrun every process probes at once, and another's cleanup may remove
        # the folder between this one's mkdir and its file: then it is made again.
        for attempt in range(10):
            try:
                out.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=out):
                    pass
                break
            except FileNotFoundError:
                if attempt == 9:
                    raise
    except OSError as error:
        raise GenError(f"--out {str(out)!r} cannot be written ({error.strerror}); "
                       f"choose another --out, or fix its permissions") from None
    finally:
        for folder in created:  # leave nothing behind: the first checkpoint creates them
            try:
                folder.rmdir()
            except OSError:
                pass


class Run:
    """One `gen train` run: its trainer, its run directory, and what it has logged.

    Built by `prepare_run`, driven by `train`. Its metrics go to the trackers
    (gen.core.tracking): the jsonl tracker's metrics.jsonl, and those --tracker names.

    In a run of several processes each has a Run; only process 0's (`is_main`) runs
    the hooks, the trackers and writes the run directory.
    """

    def __init__(self, config: TrainConfig, trainer: Trainer, model_name: str, out: Path,
                 best_val_loss: float | None, evaluated_at_start: bool = False, init_from: dict | None = None,
                 trackers: list[Tracker] | None = None):
        self.config = config
        self.init_from = init_from  # a fine-tune's starting checkpoint, recorded in each of its checkpoints
        self.trainer = trainer
        self.distributed = trainer.distributed
        self.is_main = self.distributed.is_main
        self.model_name = model_name
        self.out = out
        self.best_val_loss = best_val_loss
        self.start_step = trainer.step
        self.train_args = {key: value for key, value in asdict(config).items() if key not in NOT_SAVED}
        self.metrics: list[dict] = []
        self.trackers = trackers if self.is_main and trackers else []
        self.saved_step = self.start_step if config.resume else None  # the last checkpoint's step
        # A resumed checkpoint written at an evaluation recorded it; one that Ctrl-C wrote
        # did not, and its step's evaluation (if one was due there) runs on resume.
        self.evaluated_at_start = evaluated_at_start
        self.started = time.perf_counter()

    @property
    def tokenizer(self):
        return self.trainer.dataset.tokenizer

    def summary(self) -> str:
        """The first line of a run: the model, the tokens, the global batch, the device."""
        parameters = sum(p.numel() for p in self.trainer.model.parameters())
        dataset = self.trainer.dataset
        line = (
            f"{self.model_name}: {parameters / 1e6:.2f}M parameters; {dataset.tokenizer_document['name']} "
            f"tokenizer, {self.tokenizer.vocab_size} tokens; {len(dataset.train_ids):,} train and "
            f"{len(dataset.val_ids):,} val tokens; {self.batch_arithmetic()}; "
            f"{self.trainer.device.type} {self.dtype_name}"
        )
        return line + (", compiled" if self.config.compile else "")

    def batch_arithmetic(self) -> str:
        """Tokens per optimizer step, and where they come from: 2 processes x batch 12 x ..."""
        factors = [f"batch {self.config.batch_size}", f"block {self.trainer.block_size}"]
        if self.config.grad_accum > 1:
            factors.append(f"grad accum {self.config.grad_accum}")
        if self.distributed.launched:
            factors.insert(0, self.distributed.describe())
        return f"{self.trainer.tokens_per_step:,} tokens per step ({' x '.join(factors)})"

    @property
    def dtype_name(self) -> str:
        return str(self.trainer.dtype).removeprefix("torch.")

    def start(self) -> None:
        if not self.is_main:
            return
        config = {
            **self.train_args, "model_config": self.trainer.model.config_dict(),
            "device": str(self.trainer.device), "dtype": self.dtype_name,
            "world_size": self.distributed.world_size,
        }
        get_plugins().call_hook("on_train_start", config=config)
        self.out.mkdir(parents=True, exist_ok=True)
        # A resumed run measures again what came after its checkpoint's evaluation (or
        # the checkpoint's own step, when Ctrl-C wrote it without one).
        first_step = self.start_step + 1 if self.evaluated_at_start else self.start_step
        run_info = {"out": str(self.out), "config": config, "start_step": self.start_step,
                    "first_step": first_step if self.config.resume else 0}
        for tracker in self.trackers:
            tracker.start(run_info)

    def log(self, metrics: dict) -> None:
        """Keep a metrics line and hand it to the trackers."""
        self.metrics.append(metrics)
        for tracker in self.trackers:
            tracker.log(metrics["step"], metrics)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()

    def evaluation_due(self) -> bool:
        step = self.trainer.step
        due = step % self.config.eval_interval == 0 or step == self.config.max_iters
        return due and not (step == self.start_step and self.evaluated_at_start)

    def evaluate(self, tokens_per_second: float) -> dict:
        """Both splits' losses at this step, as the metrics line of metrics.jsonl.

        Every process evaluates its share of the batches; the losses are their means.
        """
        step = self.trainer.step
        losses = self.trainer.estimate_losses()
        metrics = {
            "step": step,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "lr": learning_rate(step, self.config),
            "tokens": step * self.trainer.tokens_per_step,
            "elapsed_s": round(time.perf_counter() - self.started, 3),
            "tokens_per_s": round(tokens_per_second),
        }
        if self.trainer.last_loss is not None:
            metrics["batch_loss"] = self.trainer.last_loss.item()
        if step == 0:
            metrics["uniform_loss"] = math.log(self.tokenizer.vocab_size)
        self.log(metrics)
        return metrics

    def log_training(self, loss: float, tokens_per_second: float) -> None:
        """A training line of metrics.jsonl: the mean loss of the last --log-interval steps
        (no val_loss: evaluation lines have one)."""
        self.log({"step": self.trainer.step, "interval_train_loss": loss,
                  "elapsed_s": round(time.perf_counter() - self.started, 3),
                  "tokens_per_s": round(tokens_per_second)})

    def stop_requested(self, metrics: dict) -> bool:
        """Whether a plugin's on_eval hook (run by process 0) asks every process to stop."""
        stop = self.is_main and any(result is True for result in get_plugins().call_hook(
            "on_eval", step=self.trainer.step, metrics=metrics))
        return self.distributed.decide(stop, self.trainer.device)

    def save_checkpoints(self, val_loss: float | None) -> None:
        """latest/ always, best/ when the validation loss improved; then the on_checkpoint hooks.

        Without a validation loss (a run interrupted between evaluations) only latest/.
        Every process takes part (each holds a share of the random states); process 0 writes.
        """
        rng_states = self.trainer.rng_states()
        improved = val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss = val_loss
        if not self.is_main:
            self.saved_step = self.trainer.step  # process 0 wrote it
            return
        for name in (LATEST, BEST) if improved else (LATEST,):
            path = self.out / name
            save_checkpoint(
                path, model=self.trainer.model, model_name=self.model_name,
                tokenizer_document=self.trainer.dataset.tokenizer_document, train_args=self.train_args,
                step=self.trainer.step, best_val_loss=self.best_val_loss, val_loss=val_loss,
                optimizer=self.trainer.optimizer, rng_states=rng_states,
                world_size=self.distributed.world_size, init_from=self.init_from,
            )
            self.saved_step = self.trainer.step
            for tracker in self.trackers:
                tracker.checkpoint(self.trainer.step, str(path))
            get_plugins().call_hook("on_checkpoint", step=self.trainer.step, path=str(path))

    def check_finite(self, loss: float, what: str) -> None:
        """Stop a run whose loss became NaN or infinite, keeping the last good checkpoint."""
        if math.isfinite(loss):
            return
        kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {str(self.out / LATEST)!r}"
                if self.saved_step is not None else "no checkpoint was written")
        raise GenError(f"the {what} became {loss} at step {self.trainer.step}: training diverged; {kept}; "
                       f"lower --lr (now {self.config.lr}) or --grad-clip, and train again")

    def result(self) -> TrainResult:
        return TrainResult(self.trainer.step, self.best_val_loss, self.out, self.metrics)


def _check_world_size(latest: Path, distributed: Distributed) -> None:
    """A run resumes on as many processes as it trained on: each holds its own random state."""
    recorded = read_config(latest).get("world_size", 1)
    if recorded != distributed.world_size:
        launch = "in one process, without torchrun" if recorded == 1 else f"with torchrun, {recorded} processes in all"
        raise GenError(
            f"the run in {str(latest.parent)!r} was trained by {processes(recorded)} and this is "
            f"{distributed.describe()}; resume it {launch} (each process continues its own random state)"
        )


def prepare_run(config: TrainConfig, given: set[str], distributed: Distributed | None = None,
                trackers: Sequence[str] = ()) -> Run:
    """Settle the options, load the data and the model, check the run directory, and
    join the other processes of a distributed run.

    Every check that can fail runs here, before anything is written; each process of
    a distributed run makes the same checks, so bad input stops them all alike.
    """
    distributed = distributed or Distributed()
    if not str(config.out).strip():  # Path("") is the current directory
        raise GenError("--out is empty; give the folder for the run, e.g. --out out")
    out = Path(config.out)
    if config.resume and config.overwrite:
        raise GenError("--resume continues the run in --out and --overwrite starts it over; give one of them")
    for name in (LATEST, BEST):
        recover_interrupted_replace(out / name)
    model_changes = {}
    if config.resume and is_checkpoint(out / LATEST):
        config = _config_for_resume(config, given, out / LATEST)
    elif config.init_from is not None:
        config, model_changes = _config_for_fine_tune(config, given, resolve_checkpoint(config.init_from))
    else:
        config = with_model_defaults(config, given)
    check_config(config)
    built_trackers = build_trackers(trackers)  # an unknown name or a missing package: before any work
    device = distributed.device(resolve_device(config.device))
    dtype = resolve_dtype(config.dtype, device)
    _check_out_dir(out, config)
    if config.resume:
        _check_world_size(out / LATEST, distributed)

    progress = distributed.is_main  # one process reports downloads and tokenizer training
    init_from = None
    if config.resume:
        resumed = load_checkpoint(out / LATEST, device="cpu")
        dataset = load_dataset(config.data, tokenizer_document=resumed.tokenizer_document, progress=progress,
                               verify=config.verify)
        model_name, model = resumed.model_name, resumed.model
        init_from = read_config(out / LATEST).get("init_from")
    elif config.init_from is not None:
        # A fine-tune: a checkpoint's model and tokenizer, loaded as a resume loads latest/,
        # then trained like a new run (fresh optimizer, step 0, the whole schedule).
        start = load_checkpoint(config.init_from, device="cpu")
        dataset = load_dataset(config.data, tokenizer_document=start.tokenizer_document, progress=progress,
                               verify=config.verify,
                               misfit_advice=f"a fine-tune keeps the tokenizer of --init-from {str(start.path)!r}: "
                                             f"remove or replace what it cannot encode, or train anew without "
                                             f"--init-from")
        model_name, model = start.model_name, _model_for_fine_tune(start, model_changes)
        init_from = _starting_point(start)
        torch.manual_seed(config.seed)  # the dropout masks, as a new run's (each process its own)
        distributed.offset_seed(config.seed)
    else:
        model_name, model_options = model_spec(config)  # a wrong option fails before the data loads
        # A token folder brings its own tokenizer: --tokenizer left at its default defers to it.
        tokenizer_spec = config.tokenizer if "tokenizer" in given or config.tokenizer != TrainConfig.tokenizer else None
        dataset = load_dataset(config.data, tokenizer_spec=tokenizer_spec, progress=progress, verify=config.verify)
        if dataset.tokenizer_spec is not None:  # recorded as the run's --tokenizer
            config = dataclasses.replace(config, tokenizer=dataset.tokenizer_spec)
        torch.manual_seed(config.seed)  # the initial weights, the same in every process
        model = build_model(model_name, {**model_options, "vocab_size": dataset.tokenizer.vocab_size})
        distributed.offset_seed(config.seed)
    block_size = model.config_dict()["block_size"]
    check_split_lengths(dataset, block_size)
    _check_training_fits(model, config, block_size, dataset.tokenizer.vocab_size)
    distributed.start(device)
    trainer = Trainer(config, dataset, model, device, dtype, distributed)
    if config.resume:
        trainer.restore(out / LATEST, resumed.step)
    if not config.resume:
        return Run(config, trainer, model_name, out, None, init_from=init_from, trackers=built_trackers)
    return Run(config, trainer, model_name, out, resumed.best_val_loss, evaluated_at_start=resumed.val_loss is not None,
               init_from=init_from, trackers=built_trackers)


def _check_training_fits(model, config: TrainConfig, block_size: int, vocab_size: int) -> None:
    """Refuse a run whose weights, gradients, AdamW moments and logits alone (a lower bound
    of what training holds) do not fit in memory, e.g. --batch-size 100000000."""
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    logits = config.batch_size * block_size * vocab_size * 4 * 3  # logits, softmax and their gradient
    check_fits(4 * weights + logits, f"training with --batch-size {config.batch_size} and block size {block_size}",
               "lower --batch-size (--grad-accum keeps the tokens per step) or the model's size")


class Throughput:
    """Training tokens per second and the mean training loss, over windows of --log-interval
    steps (evaluation not counted). The losses are summed on the device and read once a
    window, so logging adds no synchronisation per step."""

    def __init__(self, tokens_per_step: int, window: int = 10):
        self.tokens_per_step = tokens_per_step
        self.window = window
        self.tokens_per_second = 0.0
        self.mean_loss = None  # the last closed window's mean loss, a tensor
        self.restart()

    def restart(self) -> None:
        self.window_start, self.steps, self.loss_sum = time.perf_counter(), 0, 0.0

    def tick(self, loss: torch.Tensor, last_step: bool) -> bool:
        """Count one step and its loss; True when a window closed and its numbers are new."""
        self.steps += 1
        self.loss_sum = self.loss_sum + loss.detach()
        if self.steps < self.window and not last_step:
            return False
        now = time.perf_counter()
        self.tokens_per_second = self.steps * self.tokens_per_step / (now - self.window_start)
        self.mean_loss = self.loss_sum / self.steps
        self.window_start, self.steps, self.loss_sum = now, 0, 0.0
        return True


def run_training(
    config: TrainConfig,
    given: set[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    trackers: Sequence[str] = (),
) -> TrainResult:
    """Run `gen train`. `given` names the options the user gave: they win over the model's
    training defaults and, on --resume, over the saved ones. By default, those that
    differ from TrainConfig's defaults. `trackers` are --tracker specs (metrics.jsonl's
    tracker is always on)."""
    distributed = Distributed.from_environment()
    try:
        result = _training_loop(config, given, progress, say, distributed, trackers)
    except Exception as error:
        # The process group is left to the process's exit: leaving it cleanly could
        # wait on the other processes, which may be gone.
        if distributed.started and is_collective_failure(error):
            raise GenError(
                f"process {distributed.rank} of this run lost the others ({first_line(error).split('. ')[0][:200]}); "
                f"another process failed or was stopped: see its error (torchrun names it)"
            ) from None
        raise
    distributed.close()
    return result


def _training_loop(config: TrainConfig, given: set[str] | None, progress: bool, say: Callable[[str], None],
           distributed: Distributed, trackers: Sequence[str]) -> TrainResult:
    from tqdm import tqdm

    run = prepare_run(config, given_options(config) if given is None else set(given), distributed, trackers)
    config, trainer = run.config, run.trainer
    if not run.is_main:  # the other processes of a distributed run keep quiet
        say, progress = (lambda line: None), False
    say(run.summary())
    if config.resume:
        say(f"resuming {str(run.out)!r} at step {trainer.step}")
    run.start()
    bar = tqdm(total=config.max_iters, initial=trainer.step, unit="step", desc="training",
               disable=None if progress else True, dynamic_ncols=True)
    write = bar.write if progress else say
    speed = Throughput(trainer.tokens_per_step, window=config.log_interval)
    try:
        while True:
            if run.evaluation_due():
                metrics = run.evaluate(speed.tokens_per_second)
                write(_describe(metrics, run.tokenizer.vocab_size))
                # (every process has the same losses, the means over all: all stop alike)
                run.check_finite(metrics["val_loss"], "validation loss")
                stop = run.stop_requested(metrics)
                if trainer.step > 0:
                    run.save_checkpoints(metrics["val_loss"])
                if stop:
                    write(f"stopped early at step {trainer.step} by a plugin's on_eval hook")
                    break
                speed.restart()
            if trainer.step >= config.max_iters:
                break
            loss = trainer.train_step()
            bar.update(1)
            if speed.tick(loss, last_step=trainer.step == config.max_iters):
                # the mean loss of the window's global batches, the same on every process (and
                # checked at the same steps on each), so a NaN stops every process alike
                value = speed.mean_loss.item()
                run.check_finite(value, "training loss")
                bar.set_postfix(loss=f"{value:.4f}", tok_s=f"{speed.tokens_per_second:,.0f}", refresh=False)
                run.log_training(value, speed.tokens_per_second)
                if bar.disable:  # not a terminal (a log file, CI, nohup): a line instead of the bar
                    say(f"step {trainer.step}: loss {value:.4f}, {speed.tokens_per_second:,.0f} tokens/s")
    except KeyboardInterrupt as interrupt:
        bar.close()
        if trainer.step != run.saved_step and trainer.step > 0:  # keep the steps since the last checkpoint
            if isinstance(interrupt, TornStep):
                say(f"interrupted twice in the middle of step {trainer.step + 1}, which is lost with the steps "
                    f"since the last checkpoint ({_last_checkpoint(run)})")
            elif run.distributed.launched:
                # Under torchrun each process gets the signal at a different point, and a
                # checkpoint gathers every process's random states (a collective): it would hang.
                say(_interrupted_distributed(run))
            else:
                run.save_checkpoints(None)
                say(f"interrupted at step {trainer.step}; saved {run.out / LATEST}; "
                    f"continue with: gen train --out {run.out} --resume")
        raise
    finally:
        bar.close()
        run.finish()
    if config.resume and run.start_step >= config.max_iters:
        say(f"the run in {str(run.out)!r} already reached step {run.start_step}; raise --max-iters to train further")
    elif run.best_val_loss is not None:
        say(f"wrote {run.out / LATEST} (step {trainer.step}) and {run.out / BEST} "
            f"(val loss {run.best_val_loss:.4f}); took {time.perf_counter() - run.started:.1f} s")
    return run.result()


def _last_checkpoint(run: Run) -> str:
    if run.saved_step is None:
        return "none was written yet: train again"
    return f"step {run.saved_step} in {run.out / LATEST}; continue with: gen train --out {run.out} --resume"


def _interrupted_distributed(run: Run) -> str:
    """What an interrupted distributed run says: it saves nothing, and resumes from its
    last evaluation's checkpoint."""
    step = run.trainer.step
    if run.saved_step is None:
        return (f"interrupted at step {step}; a distributed run saves no checkpoint when interrupted, "
                f"and this one had written none yet: train again")
    return (f"interrupted at step {step}; a distributed run saves no checkpoint when interrupted: it "
            f"resumes from its last evaluation's, step {run.saved_step} in {run.out / LATEST}; continue "
            f"with the same torchrun command and: gen train --out {run.out} --resume")


def _describe(metrics: dict, vocab_size: int) -> str:
    """The line an evaluation prints."""
    line = f"step {metrics['step']}: train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}"
    if "uniform_loss" in metrics:
        line += f" (uniform baseline ln({vocab_size}) = {metrics['uniform_loss']:.4f})"
    return line
