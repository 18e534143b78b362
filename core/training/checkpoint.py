"""Checkpoints: a directory with the weights, the config and what an exact resume needs.

    <checkpoint>/
        config.json                  format version, model plugin name and config, tokenizer
                                     {"name", "state"}, training arguments, step, losses,
                                     world_size (the processes that trained it)
                                     (and "source" for a model made by `gen import`,
                                     "init_from" for a fine-tune: the checkpoint it started from)
        model.safetensors            the weights (a tied weight is stored once)
        training_state.safetensors   optimizer tensors (AdamW moments, steps) and RNG states
                                     (of every process of a distributed run)
        training_state.json          optimizer hyperparameters (param_groups)

Nothing is pickled, so loading a checkpoint from someone else runs no code of theirs.

A directory is written atomically: everything goes into a temporary sibling, which
replaces the old directory with two renames (old -> aside, new -> in place); the old
one is removed only once the new one is in place.

`gen train --out out` writes a *run directory* holding two checkpoints and the log:

    out/latest/      the last evaluation's checkpoint, which --resume continues
    out/best/        the checkpoint with the lowest validation loss so far
    out/metrics.jsonl

Commands that read a checkpoint (`gen sample`, `gen eval`, `gen export`) accept a
checkpoint directory or a run directory; a run directory means its best checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

from gen.core.tracking import METRICS_FILE  # noqa: F401 (metrics.jsonl: plot and info import it from here)
from gen.core.errors import GenError, first_line
from gen.core.files import check_utf8_path, recover_interrupted_replace, replace_directory_atomically
from gen.core.reading import (
    SIZE_LIMITS,
    check_regular_file,
    decode_utf8,
    load_json,
    parse_json,
    validate,
)
from gen.core.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "gen.checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE)
LATEST = "latest"
BEST = "best"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode and everything written beside it."""

    path: Path
    model: object  # a torch nn.Module built by the model plugin
    model_name: str
    model_config: dict
    tokenizer: Tokenizer
    tokenizer_document: dict  # {"name", "state"}
    train_args: dict
    step: int
    best_val_loss: float | None
    val_loss: float | None


# --- finding a checkpoint -------------------------------------------------------------


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory that `path` names: itself, or a run directory's best."""
    check_utf8_path(path, "checkpoint")
    path = Path(path)
    for candidate in (path, path / BEST, path / LATEST):
        recover_interrupted_replace(candidate)
    if is_checkpoint(path):
        return path
    for inside in (BEST, LATEST):
        if is_checkpoint(path / inside):
            return path / inside
    if not path.exists():
        raise GenError(
            f"no checkpoint at {str(path)!r}: the directory does not exist; train one with gen train --out {path}"
        )
    raise GenError(
        f"no checkpoint in {str(path)!r}: it has no {CONFIG_FILE} (nor {BEST}/ or {LATEST}/ with one); "
        f"train one with gen train --out {path}"
    )


# --- writing --------------------------------------------------------------------------


def _optimizer_to_files(optimizer) -> tuple[dict, dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON."""
    state_dict = optimizer.state_dict()
    tensors = {}
    other_state = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if hasattr(value, "detach"):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                other_state.setdefault(str(index), {})[key] = value
    document = {"param_groups": state_dict["param_groups"], "state": other_state}
    return tensors, document


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model,
    model_name: str,
    tokenizer_document: dict,
    train_args: dict,
    step: int,
    best_val_loss: float | None = None,
    val_loss: float | None = None,
    optimizer=None,
    rng_states: dict | None = None,
    world_size: int = 1,
    source: dict | None = None,
    init_from: dict | None = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically.

    `rng_states` maps names to uint8 tensors (torch.get_rng_state(), a Generator's
    get_state()); with `optimizer` they make `--resume` continue bit for bit.
    `world_size` is how many processes trained it (torchrun), which a resume keeps.
    `source` (JSON) says where an imported model came from (`gen import`), `init_from`
    (JSON: path, step, and that checkpoint's own source or init_from) which checkpoint
    a fine-tune (`gen train --init-from`) started from.
    """
    import torch
    from safetensors.torch import save_file, save_model

    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name, "config": model.config_dict()},
        "tokenizer": tokenizer_document,
        "train_args": train_args,
        "step": step,
        "best_val_loss": best_val_loss,
        "val_loss": val_loss,
        "world_size": world_size,
        "torch_version": torch.__version__,
    }
    if source is not None:
        config["source"] = source
    if init_from is not None:
        config["init_from"] = init_from

    with replace_directory_atomically(path) as directory:
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        # save_model stores a tied weight (wte = lm_head) once; save_file would refuse it.
        save_model(model, str(directory / WEIGHTS_FILE))
        if optimizer is not None or rng_states:
            tensors, document = _optimizer_to_files(optimizer) if optimizer is not None else ({}, {})
            for name, state in (rng_states or {}).items():
                tensors[f"rng.{name}"] = state.detach().contiguous().cpu()
            save_file(tensors, str(directory / STATE_TENSORS_FILE))
            (directory / STATE_JSON_FILE).write_text(json.dumps(document) + "\n", encoding="utf-8")
    return Path(path)


# --- reading --------------------------------------------------------------------------


class _ModelEntry(msgspec.Struct):
    name: str
    config: dict


class _CheckpointConfig(msgspec.Struct):
    """The fields of config.json that gen reads, with their types (others are kept as they are)."""

    model: _ModelEntry
    tokenizer: dict
    train_args: dict
    step: Annotated[int, msgspec.Meta(ge=0)]
    best_val_loss: float | None = None
    val_loss: float | None = None
    world_size: Annotated[int, msgspec.Meta(ge=1)] = 1
    source: dict | None = None  # where `gen import` took the model from
    init_from: dict | None = None  # the checkpoint a fine-tune started from


def read_config(path: str | os.PathLike) -> dict:
    """The checked config.json of the checkpoint at `path` (a checkpoint directory)."""
    file = Path(path) / CONFIG_FILE
    try:
        config = load_json(file, "checkpoint config")
    except GenError as error:
        raise GenError(f"checkpoint {str(path)!r} is damaged: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GenError(f"checkpoint {str(path)!r} is damaged: {CONFIG_FILE} is not a gen checkpoint config")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise GenError(f"checkpoint {str(path)!r} is damaged: {CONFIG_FILE} has format version {version!r}")
    if version > FORMAT_VERSION:
        raise GenError(
            f"checkpoint {str(path)!r} has format version {version!r}; this gen reads up to "
            f"{FORMAT_VERSION}: upgrade gen"
        )
    validate(config, _CheckpointConfig, f"checkpoint {str(path)!r}: its {CONFIG_FILE}")
    return config


def count_parameters(path: str | os.PathLike) -> int:
    """The number of parameters in the checkpoint at `path`, read from the header of its
    model.safetensors (8 bytes of header length, then JSON naming each tensor's shape),
    without torch. A tied weight is stored, and counted, once."""
    return sum(math.prod(shape) for shape in weight_shapes(path).values())


def weight_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the model.safetensors of the checkpoint at `path`, read
    from its header (8 bytes of header length, then JSON), without torch or the weights."""
    file = Path(path) / WEIGHTS_FILE
    if not file.exists():
        raise GenError(f"checkpoint {str(path)!r} is damaged: {WEIGHTS_FILE} is missing")
    try:
        status = check_regular_file(file, "weights file", 2**62)
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= min(status.st_size - 8, SIZE_LIMITS["safetensors header"]):
                raise GenError("the header length is out of range")
            header = parse_json(decode_utf8(handle.read(size), "its header"), "its header")
        if not isinstance(header, dict):
            raise GenError("its header is not a JSON object")
        return {name: tuple(validate(entry, _TensorEntry, f"its tensor {name!r}").shape)
                for name, entry in header.items() if name != "__metadata__"}
    except OSError as error:
        raise GenError(f"checkpoint {str(path)!r} is damaged: cannot read {WEIGHTS_FILE} ({error.strerror})") from None
    except GenError as error:
        raise GenError(f"checkpoint {str(path)!r} is damaged: cannot read {WEIGHTS_FILE} ({error})") from None


class _TensorEntry(msgspec.Struct):
    shape: list[Annotated[int, msgspec.Meta(ge=0)]]


def build_model(model_name: str, model_config: dict, stored_parameters: int | None = None):
    """A fresh model from its plugin name and config (see gen.core.model).

    A config is often someone else's file, and a few bytes of it can describe a model
    of terabytes. So the model is first built on torch's meta device, which allocates
    nothing, and one that would not fit in memory is refused with its size. Where the
    weights to load are known (`stored_parameters`: how many numbers they hold), a
    config that describes more than they hold is refused too, before it is built.
    """
    import torch

    from gen.core.limits import check_fits
    from gen.core.registry import get_registry

    cls = get_registry().get("model", model_name)

    def construct():
        try:
            return cls.from_config(model_config)
        except GenError:
            raise
        except (TypeError, ValueError, RuntimeError, OverflowError) as error:
            raise GenError(f"model {model_name!r} cannot be built from its config: {error}") from None

    with torch.device("meta"):
        probe = construct()
    tensors = [*probe.parameters(), *probe.buffers()]
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    count = sum(parameter.numel() for parameter in probe.parameters())
    check_fits(size, f"model {model_name!r} ({count:,} parameters)",
               "the config asks for more than this machine holds (or is damaged)")
    if stored_parameters is not None and count > stored_parameters:
        raise GenError(f"the weights ({stored_parameters:,} parameters) do not fit the {model_name} config, "
                       f"which describes {count:,}: the config and the weights disagree")
    return construct()


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> Checkpoint:
    """Load the checkpoint at `path` (a checkpoint or run directory) with its model in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    directory = resolve_checkpoint(path)
    config = read_config(directory)
    model_name = config["model"]["name"]
    try:
        model = build_model(model_name, config["model"]["config"], stored_parameters=count_parameters(directory))
    except GenError as error:
        raise GenError(f"checkpoint {str(directory)!r}: {error}") from None
    try:
        load_model(model, str(directory / WEIGHTS_FILE), strict=True, device="cpu")
    except FileNotFoundError:
        raise GenError(f"checkpoint {str(directory)!r} is damaged: {WEIGHTS_FILE} is missing") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise GenError(f"checkpoint {str(directory)!r} is damaged: cannot read {WEIGHTS_FILE} "
                       f"({first_line(error)})") from None
    except RuntimeError as error:  # missing, unexpected or wrongly shaped tensors
        message = " ".join(str(error).split())[:300]
        raise GenError(
            f"checkpoint {str(directory)!r}: the weights in {WEIGHTS_FILE} do not fit the {model_name} "
            f"config in {CONFIG_FILE} ({message})"
        ) from None
    tokenizer = tokenizer_from_dict(config["tokenizer"])
    vocab_size = config["model"]["config"].get("vocab_size")
    if isinstance(vocab_size, int) and tokenizer.vocab_size > vocab_size:
        raise GenError(f"checkpoint {str(directory)!r} is damaged: its tokenizer has {tokenizer.vocab_size:,} "
                       f"tokens, more than the {vocab_size:,} of its model")
    return Checkpoint(
        path=directory,
        model=model.to(device).eval(),
        model_name=model_name,
        model_config=config["model"]["config"],
        tokenizer=tokenizer,
        tokenizer_document=config["tokenizer"],
        train_args=config["train_args"],
        step=config["step"],
        best_val_loss=config.get("best_val_loss"),
        val_loss=config.get("val_loss"),
    )


class _TrainingState(msgspec.Struct):
    param_groups: list[dict]
    state: dict[str, dict] = {}


Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]


class _ParamGroup(msgspec.Struct):
    """What AdamW reads of a param group, within the values it accepts."""

    lr: Annotated[float, msgspec.Meta(ge=0)]
    betas: tuple[Fraction, Fraction]
    eps: Annotated[float, msgspec.Meta(gt=0)]
    weight_decay: Annotated[float, msgspec.Meta(ge=0)]
    params: list[Annotated[int, msgspec.Meta(ge=0)]]


def load_training_state(path: str | os.PathLike, optimizer) -> dict:
    """Restore `optimizer` from the checkpoint at `path`; returns the RNG states by name.

    Everything is checked against what this optimizer and model expect (names, dtypes,
    shapes), so a damaged or foreign file is one clear error, not a crash mid-step.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    import torch

    directory = Path(path)

    def damaged(problem: str) -> GenError:
        return GenError(f"checkpoint {str(directory)!r} has a damaged training state ({problem}); "
                        f"resume from another checkpoint or train anew with --overwrite")

    if not (directory / STATE_TENSORS_FILE).exists() or not (directory / STATE_JSON_FILE).exists():
        raise GenError(
            f"checkpoint {str(directory)!r} has no training state to resume from "
            f"({STATE_TENSORS_FILE}, {STATE_JSON_FILE})"
        )
    try:
        check_regular_file(directory / STATE_TENSORS_FILE, "training state", 2**62)
        tensors = load_file(str(directory / STATE_TENSORS_FILE))
        document = validate(load_json(directory / STATE_JSON_FILE, "training state"), _TrainingState,
                            STATE_JSON_FILE)
    except GenError as error:
        raise damaged(str(error)) from None
    except (SafetensorError, OSError, ValueError) as error:
        raise damaged(f"cannot read it: {first_line(error)}") from None
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    state: dict = {}
    rng_states = {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition(".")
        index, _, key = rest.partition(".")
        if kind == "rng" and rest and tensor.dtype == torch.uint8 and tensor.dim() == 1:
            rng_states[rest] = tensor
        elif kind == "optimizer" and index.isdigit() and int(index) < len(parameters) and key:
            expected = parameters[int(index)].shape if key != "step" else tensor.shape
            if tensor.shape != expected:
                raise damaged(f"{name} has shape {tuple(tensor.shape)}, the parameter {tuple(expected)}")
            state.setdefault(int(index), {})[key] = tensor
        else:
            raise damaged(f"unexpected tensor {name!r} ({tensor.dtype}, shape {tuple(tensor.shape)})")
    for index, values in document.state.items():
        if not index.isdigit():
            raise damaged(f"state entry {index!r} is not an optimizer state")
        state.setdefault(int(index), {}).update(values)
    param_groups = document.param_groups
    for group in param_groups:
        try:
            validate(group, _ParamGroup, f"a param group of {STATE_JSON_FILE}")
        except GenError as error:
            raise damaged(str(error)) from None
        group["betas"] = tuple(group["betas"])  # JSON has no tuples
    try:
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as error:
        raise GenError(
            f"checkpoint {str(directory)!r}: its optimizer state does not fit this model and optimizer ({error})"
        ) from None
    return rng_states
