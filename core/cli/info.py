"""`gen info PATH`: what a checkpoint, a run directory or an export holds (no torch).

Everything is read from the files themselves: a checkpoint's config.json and the
header of its model.safetensors, an export's metadata and graph (through
gen.runtime.artifact, without the onnx package). `describe` returns a JSON-ready
dict (what `gen info --json` prints); `format_info` turns it into lines of text.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import msgspec

from gen.core.training.checkpoint import (
    BEST,
    LATEST,
    METRICS_FILE,
    STATE_TENSORS_FILE,
    count_parameters,
    is_checkpoint,
    read_config,
    resolve_checkpoint,
)
from gen.core.errors import GenError
from gen.core.reading import SIZE_LIMITS, read_text, validate
from gen.core.tokenizer import tokenizer_from_dict

# ops that onnxruntime's dynamic quantization puts in a graph
DYNAMIC_QUANTIZATION_OPS = ("DynamicQuantizeLinear", "MatMulInteger")
WEIGHT_ONLY_INT4_OP = "MatMulNBits"


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _tokenizer(document: dict) -> dict:
    """The tokenizer's name and vocabulary size (None, with the reason, if it cannot be built here)."""
    described = {"name": document.get("name"), "vocab_size": None}
    try:
        described["vocab_size"] = tokenizer_from_dict(document).vocab_size
    except GenError as error:
        described["unavailable"] = str(error)
    return described


def describe(path: str | os.PathLike) -> dict:
    """What the checkpoint, run directory or export at `path` holds."""
    from gen.core.cli.backends import is_onnx_path

    path = Path(path)
    if not path.exists():
        raise GenError(f"{str(path)!r} does not exist; give a checkpoint, a run directory or an .onnx export")
    if is_onnx_path(path):
        return describe_export(path)
    info = describe_checkpoint(resolve_checkpoint(path))
    if not is_checkpoint(path):  # a run directory: its best checkpoint, and the run around it
        info["run"] = describe_run(path)
    return info


def describe_checkpoint(directory: Path) -> dict:
    config = read_config(directory)
    model = config["model"]
    return {
        "kind": "checkpoint",
        "path": str(directory),
        "model": {"name": model["name"], "config": model["config"]},
        "parameters": count_parameters(directory),
        "tokenizer": _tokenizer(config["tokenizer"]),
        "block_size": model["config"].get("block_size"),
        "size_bytes": _size_on_disk(directory),
        "step": config["step"],
        "val_loss": config.get("val_loss"),
        "best_val_loss": config.get("best_val_loss"),
        "data": config["train_args"].get("data"),
        "resumable": (directory / STATE_TENSORS_FILE).is_file(),
        **({"source": config["source"]} if "source" in config else {}),
        **({"init_from": config["init_from"]} if "init_from" in config else {}),
    }


def describe_run(run_dir: Path) -> dict:
    """The run around the checkpoints: the latest step and how many evaluations it logged."""
    latest = run_dir / LATEST
    metrics = run_dir / METRICS_FILE
    evaluations = 0
    if metrics.is_file():
        text = read_text(metrics, "metrics log", SIZE_LIMITS["metrics log"])
        # evaluation lines hold a val_loss; the --log-interval lines between them do not
        evaluations = sum(1 for line in text.splitlines() if '"val_loss"' in line)
    return {
        "path": str(run_dir),
        "latest_step": read_config(latest)["step"] if is_checkpoint(latest) else None,
        "best": str(run_dir / BEST) if is_checkpoint(run_dir / BEST) else None,
        "evaluations": evaluations,
        "size_bytes": _size_on_disk(run_dir),
    }


class _ExportedModel(msgspec.Struct):
    """What gen info prints of an export's model metadata beyond what read_artifact checks."""

    parameters: Annotated[int, msgspec.Meta(ge=0)] | None = None
    name: str | None = None
    config: dict | None = None


class _ExportedTraining(msgspec.Struct):
    step: Annotated[int, msgspec.Meta(ge=0)] | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    data: str | None = None


def describe_export(path: Path) -> dict:
    from gen.runtime.artifact import read_artifact, read_graph_summary

    artifact = read_artifact(path)
    graph = read_graph_summary(path)
    model = artifact.model
    training = artifact.training or {}
    validate(model, _ExportedModel, f"{str(path)!r}: its gen.model metadata")
    validate(training, _ExportedTraining, f"{str(path)!r}: its gen.training metadata")
    if WEIGHT_ONLY_INT4_OP in graph.operators:  # its packed 4-bit weights are stored as uint8
        quantization = "int4"
    elif any(op in graph.operators for op in DYNAMIC_QUANTIZATION_OPS):
        quantization = "int8"
    elif any(name in graph.weights for name in ("int8", "uint8")):
        quantization = "int8 (static)"
    else:
        quantization = None
    described = {
        "kind": "export",
        "path": str(path),
        "format_version": artifact.format_version,
        "model": {"name": model.get("name"), "config": model.get("config")},
        "parameters": model.get("parameters"),  # recorded by gen export; absent in older files
        "graph_weights": graph.weights,
        "tokenizer": _tokenizer(artifact.tokenizer),
        "block_size": artifact.block_size,
        "size_bytes": _size_on_disk(path),
        "step": training.get("step"),
        "val_loss": training.get("val_loss"),
        "best_val_loss": training.get("best_val_loss"),
        "data": training.get("data"),
        "opset": graph.opset,
        "quantization": quantization,
        "chat_template": artifact.chat_template is not None,
        "attention_outputs": artifact.has_attention,  # gen export --attention
        "kv_cache": (
            {"n_layer": model["n_layer"], "n_head": model["n_head"], "head_size": model["head_size"],
             **({"capacity": artifact.cache_capacity} if artifact.cache_capacity else {})}  # --static-cache
            if model["n_layer"] else None
        ),
    }
    if artifact.cache_kind == "state":  # a fixed-size state instead of a KV cache
        described["state"] = {name: list(shape) for name, shape in artifact.state_shapes.items()}
    return described


# --- as text --------------------------------------------------------------------------


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _options(config: dict | None) -> str:
    """A model's options by name: a checkpoint keeps the model's own order and an export's
    metadata another, and the two should read alike."""
    if not config:
        return "(no options recorded)"
    return ", ".join(f"{key}={value}" for key, value in sorted(config.items()))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _loss(value) -> str:
    return "not recorded" if value is None else f"{value:.4f}"


def _stored_beside(parameters: int, info: dict) -> str:
    """For an export, why its graph's weights (the numbers it stores, counted in the quantization
    row) are not its parameters: gpt's output head is its token embedding (tied: one parameter
    tensor), which the graph stores again transposed for its MatMul, and the graph adds constants
    such as the zero biases of bias-free LayerNorms. A quantized graph packs its weights instead."""
    if info["kind"] != "export" or info["quantization"]:
        return ""
    difference = sum(info["graph_weights"].values()) - parameters
    if difference <= 0:
        return ""
    return (f"; the graph stores {difference:,} numbers more (a tied output head again, transposed; "
            f"constants such as zero LayerNorm biases)")


def _starting_point(point: dict) -> str:
    """Where a fine-tune started: the checkpoint and its step, then where that one came from."""
    text = f"from {point.get('path')} (step {point.get('step')})"
    if isinstance(point.get("source"), dict):
        text += f", imported from {point['source'].get('format')} {point['source'].get('path')}"
    if isinstance(point.get("init_from"), dict):
        text += ", itself fine-tuned " + _starting_point(point["init_from"])
    return text


def format_info(info: dict) -> list[str]:
    """`gen info` as lines of text: a heading, then one `name  value` row per fact."""
    rows = []
    if "run" in info:
        run = info["run"]
        rows.append(("run", f"latest step {run['latest_step']}, {run['evaluations']} evaluations in "
                            f"{METRICS_FILE}, {_megabytes(run['size_bytes'])} in all"))
    model = info["model"]
    rows.append(("model", f"{model['name']}: {_options(model['config'])}"))
    parameters = info["parameters"]
    rows.append(("parameters", "not recorded" if parameters is None else
                 f"{parameters:,} ({parameters / 1e6:.2f}M){_stored_beside(parameters, info)}"))
    tokenizer = info["tokenizer"]
    vocabulary = (f"{tokenizer['vocab_size']:,} tokens" if tokenizer["vocab_size"] is not None
                  else f"vocabulary unknown here ({tokenizer.get('unavailable')})")
    rows.append(("tokenizer", f"{tokenizer['name']}, {vocabulary}"))
    rows.append(("block size", f"{info['block_size']} tokens"))
    if info["step"] is None:
        rows.append(("training", "not recorded"))
    else:
        data = f" on {info['data']!r}" if info.get("data") else ""
        rows.append(("training", f"step {info['step']:,}{data}; validation loss {_loss(info['val_loss'])} "
                                 f"(best {_loss(info['best_val_loss'])})"))
    rows.append(("size", _megabytes(info["size_bytes"])))
    if info["kind"] == "checkpoint":
        rows.append(("resumable", "yes (optimizer and random states)" if info["resumable"]
                     else "no (weights only)"))
        if "source" in info:
            source = info["source"]
            rows.append(("imported", f"from {source.get('format')} {source.get('path')}"))
        if "init_from" in info:
            rows.append(("fine-tuned", _starting_point(info["init_from"])))
    else:
        weights = ", ".join(f"{count:,} {kind}" for kind, count in info["graph_weights"].items())
        rows.append(("opset", str(info["opset"])))
        rows.append(("quantization", f"{info['quantization']} (weights: {weights})" if info["quantization"]
                     else f"none (weights: {weights})"))
        cache = info["kv_cache"]
        if "state" in info:
            tensors = ", ".join(f"{name} {' x '.join(map(str, shape)) or '(scalar)'}"
                                for name, shape in info["state"].items())
            rows.append(("cache", f"state of {tensors} per row (fixed size: each step replaces it)"))
        else:
            capacity = f", a fixed capacity of {cache['capacity']} positions updated in place (--static-cache)" \
                if cache and "capacity" in cache else ""
            rows.append(("KV cache", f"yes: {_count(cache['n_layer'], 'layer')} x {_count(cache['n_head'], 'head')} x "
                                     f"{cache['head_size']}{capacity}" if cache
                         else "no (the model reads its whole window each step)"))
        if cache:  # only a model with attention layers can have their weights as outputs
            rows.append(("attention", "weights of every layer as outputs (gen attention, the playground's panel)"
                         if info["attention_outputs"] else "not in the outputs (gen export --attention adds them)"))
        # "chat", not "chat template": no label longer than the others', which would move every column
        rows.append(("chat", "a chat template (gen serve's /v1/chat/completions uses it)" if info["chat_template"]
                     else "no chat template (gen serve's /v1/chat/completions uses its plain default)"))
    if "run" in info:
        heading = f"{info['run']['path']}: a gen train run directory, described by its checkpoint {info['path']}:"
    elif info["kind"] == "checkpoint":
        heading = f"{info['path']}: a gen checkpoint"
    else:
        heading = f"{info['path']}: a gen export (format {info['format_version']})"
    width = max(len(name) for name, _ in rows)
    return [heading] + [f"  {name.ljust(width)}  {value}" for name, value in rows]
