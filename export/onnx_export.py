"""Export a gen model to one ONNX file that `gen run` can use on its own.

This module imports torch, onnx and onnxscript (the `train` extra); `gen export`
imports it only when it runs. The file format is described in
gen.runtime.artifact and in docs/export.md.

How a model plugin takes part: through the model contract of gen.core.model and
nothing else, so a third-party model needs no registration beyond its
`register_models` hook.

- A model with a KV cache (`cache_kind` "kv") is traced through `forward_cached`; the
  number of layers, heads and the head size are read off `empty_past(1)`. The graph
  gets the cache inputs and outputs, and generation reuses the cache.
- A model with a fixed-size state (`cache_kind` "state") is traced through
  `forward_cached` too, with one `past_state.{name}` input and `present_state.{name}`
  output per tensor of `empty_state(1)`, whose names and shapes the metadata records.
- Any other model is traced through `forward(idx)`, with inputs `input_ids` and
  `attention_mask` (kept so that every gen export takes the same inputs; such a
  model ignores it) and output `logits`. Generation then feeds the last
  `block_size` tokens at every step.

Steps, each announced through `progress`: trace with torch.export and translate
to ONNX (torch.onnx.export(dynamo=True), from a sample with a non-empty past and
every axis its own Dim), add the gen metadata, run onnx.checker (full check), write
the file atomically as one file without external data, verify it against torch
in onnxruntime, and optionally quantize it to int8 or int4 weights.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnx
import torch

from gen.core.errors import GenError, first_line
from gen.core.files import check_writable_destination, replace_file_atomically
from gen.core.model import STATE, cache_kind
from gen.core.tokenizer import tokenizer_from_dict
from gen.export.attention import TRANSLATIONS
from gen.export.quantize import QUANTIZATIONS, validation_ids_of
from gen.export.quantize import quantize as quantize_file
from gen.runtime.artifact import (
    CHAT_TEMPLATE_KEY,
    ATTENTION_MASK,
    FORMAT_KEY,
    FORMAT_VERSION,
    INPUT_IDS,
    LOGITS,
    MODEL_KEY,
    TOKENIZER_KEY,
    TRAINING_KEY,
    STATE_NAME,
    past_names,
    past_state_names,
    present_names,
    present_state_names,
)

Progress = Callable[[str], None]
_PROTOBUF_LIMIT = 2**31 - 1  # a single-file ONNX model is one protobuf message


@dataclass
class ExportResult:
    """What an export produced, for callers and tests."""

    path: Path
    size_bytes: int
    opset: int
    max_logits_diff: float | None = None  # None when verification was skipped
    quantized: dict = field(default_factory=dict)  # sizes and losses when --quantize was given


@dataclass(frozen=True)
class ExportOptions:
    """How to export: the choices of `gen export`, taken alike by export_model, export_onnx
    and gen.export.genai.export_genai."""

    opset: int | None = None  # the ONNX opset of torch's portable graph (implies portable); None: its own
    quantize: str | None = None  # "int8" or "int4" weights (one of QUANTIZATIONS); None: float32
    verify: bool = True  # compare onnxruntime with torch on the written file
    overwrite: bool = False  # replace an existing file (kept until the new one is whole)
    portable: bool = False  # torch's operator-by-operator graph instead of gpt's fused one
    static_cache: bool = False  # gpt's cache of block_size positions, updated in place
    attention: bool = False  # gpt's attention weights as extra outputs attention.{i} (for inspecting)
    chat_template: str | None = None  # a Jinja chat template to carry (gen.runtime.chat), checked before export
    progress: Progress | None = print  # where each step is announced; None: nowhere

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


# --- what the graph looks like for a given model -------------------------------------


@dataclass
class CacheShape:
    """The KV cache layout of a model, read off its empty_past(1)."""

    n_layer: int
    n_head: int
    head_size: int


@dataclass
class StateShape:
    """The fixed-size state of a model, read off its empty_state(1): name -> shape without the batch."""

    shapes: dict[str, tuple[int, ...]]  # in the order of the graph's inputs (sorted by name)

    @property
    def names(self) -> list[str]:
        return list(self.shapes)


def cache_shape(model: torch.nn.Module) -> CacheShape | StateShape | None:
    """The model's cache layout, or None for a model exported without a cache."""
    kind = cache_kind(model)
    if kind is None:
        return None
    if kind == STATE:
        return state_shape(model)
    past = model.empty_past(1)
    if not past:
        raise GenError(f"{type(model).__name__}.empty_past(1) returned no layers; it must return one (key, value) pair per layer")
    key = past[0][0]
    if key.dim() != 4 or key.size(2) != 0:
        raise GenError(
            f"{type(model).__name__}.empty_past(1) must return (1, heads, 0, head_size) tensors, "
            f"got shape {tuple(key.shape)}"
        )
    return CacheShape(n_layer=len(past), n_head=key.size(1), head_size=key.size(3))


def state_shape(model: torch.nn.Module) -> StateShape:
    """The names and shapes of `model.empty_state(1)`, checked against the contract."""
    what = f"{type(model).__name__}.empty_state(1)"
    state = model.empty_state(1)
    if not isinstance(state, dict) or not state:
        raise GenError(f"{what} must return a non-empty dict of name -> tensor, got {type(state).__name__}")
    shapes = {}
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(name, str) or not STATE_NAME.fullmatch(name):
            raise GenError(f"{what} has a state named {name!r}; use letters, digits and underscores (at most 64)")
        if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1 or tensor.size(0) != 1 \
                or not tensor.is_floating_point():
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise GenError(f"{what}[{name!r}] must be a float tensor of shape (1, ...), batch first; got {got}")
        shapes[name] = tuple(tensor.shape[1:])
    return StateShape(shapes)


def _layout(cache: CacheShape | StateShape | None) -> str:
    """The cache as the export's progress describes it."""
    if isinstance(cache, StateShape):
        return "state of " + ", ".join(f"{name} {' x '.join(map(str, shape)) or 'scalar'}"
                                       for name, shape in cache.shapes.items()) + " (fixed size)"
    if cache:
        return f"KV cache of {cache.n_layer} layers x {cache.n_head} heads x {cache.head_size}"
    return "no KV cache"


class CachedStep(torch.nn.Module):
    """forward_cached with flat tensors in and out, in the order of the graph's inputs and outputs."""

    def __init__(self, model: torch.nn.Module, n_layer: int):
        super().__init__()
        self.model = model
        self.n_layer = n_layer

    def forward(self, input_ids, attention_mask, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(self.n_layer)]
        logits, presents = self.model.forward_cached(input_ids, attention_mask, past)
        return (logits, *[tensor for pair in presents for tensor in pair])


class StateStep(torch.nn.Module):
    """forward_cached of a state model with flat tensors in and out, in the order of `names`."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids, attention_mask, *state_flat):
        logits, state = self.model.forward_cached(input_ids, attention_mask, dict(zip(self.names, state_flat)))
        return (logits, *[state[name] for name in self.names])


class WholeSequence(torch.nn.Module):
    """forward(idx) for a model without a cache; the mask is an input it does not use."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        logits, _ = self.model(input_ids)
        return logits


def model_config(model: torch.nn.Module) -> dict:
    config_dict = getattr(model, "config_dict", None)
    if not callable(config_dict):
        raise GenError(f"{type(model).__name__} has no config_dict(); a gen model plugin must define it")
    config = config_dict()
    for key in ("block_size", "vocab_size"):
        if not isinstance(config.get(key), int):
            raise GenError(f"{type(model).__name__}.config_dict() must give an integer {key!r}")
    return config


def registered_model_name(model: torch.nn.Module) -> str:
    """The name under which a plugin registered the model's class."""
    from gen.core.registry import get_registry

    registry = get_registry()
    for name in registry.names("model"):
        if registry.get("model", name) is type(model):
            return name
    raise GenError(
        f"{type(model).__name__} is not a registered gen model; register it in a plugin's "
        f"register_models hook, or pass model_name"
    )


def _sample_inputs(model: torch.nn.Module, cache: CacheShape | StateShape | None, block_size: int, vocab_size: int):
    """Inputs to trace with: every dynamic axis at least 2 (torch.export specialises 0 and 1)
    and each a different size, with a non-empty past so the cache's concatenation is traced."""
    batch, past_length, length = 2, 3, 2
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
    if cache is None:
        return (input_ids, torch.ones(batch, length, dtype=torch.long))
    total = past_length + length
    # Left padding keeps every position inside block_size even for a tiny block_size.
    attention_mask = torch.zeros(batch, total, dtype=torch.long)
    attention_mask[:, -min(total, block_size):] = 1
    weight = next(model.parameters())
    if isinstance(cache, StateShape):
        state = [torch.randn(batch, *shape, generator=generator).to(weight.dtype) for shape in cache.shapes.values()]
        return (input_ids, attention_mask, *state)
    past = [
        torch.randn(batch, cache.n_head, past_length, cache.head_size, generator=generator).to(weight.dtype)
        for _ in range(2 * cache.n_layer)
    ]
    return (input_ids, attention_mask, *past)


def _dynamic_shapes(cache: CacheShape | StateShape | None):
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    if cache is None:
        return ({0: batch, 1: sequence}, {0: batch, 1: sequence})
    # The exporter does not accept past + sequence as the mask's length, so the total
    # gets its own Dim; the graph then works for any past length, zero included.
    total_sequence = torch.export.Dim("total_sequence")
    if isinstance(cache, StateShape):  # a state has the batch axis only
        state = tuple({0: batch} for _ in cache.names)
        return ({0: batch, 1: sequence}, {0: batch, 1: total_sequence}, state)
    past_sequence = torch.export.Dim("past_sequence")
    past = tuple({0: batch, 2: past_sequence} for _ in range(2 * cache.n_layer))
    return ({0: batch, 1: sequence}, {0: batch, 1: total_sequence}, past)  # past: CachedStep's *past_flat


# The exporter's own chatter: torchvision not installed, axis names, opset conversion.
_NOISY_LOGGERS = (
    "torch.onnx._internal.exporter._registration",
    "torch.onnx._internal.exporter._compat",
    "onnxscript.version_converter",
)
# torch's exporter writes opset 18 and newer; it converts down with onnx's version
# converter, which fails on or silently breaks common operators (LayerNormalization, Split).
OLDEST_OPSET = 18


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's warnings and log lines; errors still come through."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def to_onnx_proto(model: torch.nn.Module, cache: CacheShape | StateShape | None, opset: int | None) -> onnx.ModelProto:
    """Trace the model and translate it to an ONNX ModelProto (weights inline)."""
    config = model_config(model)
    if opset is not None and opset < OLDEST_OPSET:
        raise GenError(
            f"cannot export at opset {opset}: torch's exporter writes opset {OLDEST_OPSET} or newer "
            f"(its conversion to older opsets breaks common operators); use --opset {OLDEST_OPSET} or newer"
        )
    if cache is None:
        module = WholeSequence(model).eval()
        input_names = [INPUT_IDS, ATTENTION_MASK]
        output_names = [LOGITS]
    elif isinstance(cache, StateShape):
        module = StateStep(model, cache.names).eval()
        input_names = [INPUT_IDS, ATTENTION_MASK, *past_state_names(cache.names)]
        output_names = [LOGITS, *present_state_names(cache.names)]
    else:
        module = CachedStep(model, cache.n_layer).eval()
        input_names = [INPUT_IDS, ATTENTION_MASK, *past_names(cache.n_layer)]
        output_names = [LOGITS, *present_names(cache.n_layer)]
    sample = _sample_inputs(model, cache, config["block_size"], config["vocab_size"])
    _forget_rnn_kernels()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                sample,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=_dynamic_shapes(cache),
                opset_version=opset,
                custom_translation_table=TRANSLATIONS,
                dynamo=True,
                verbose=False,
            )
    except Exception as error:
        raise GenError(f"torch could not export {type(model).__name__} to ONNX: {first_line(error)}") from error
    proto = program.model_proto
    if isinstance(cache, StateShape):
        # The shapes torch's exporter records between the operators (optional hints) can
        # fix a sequence length to the sample's where recurrent layers are stacked (nn.GRU
        # feeding nn.GRU, torch 2.13), and onnxruntime would plan its buffers on them; without
        # the hints it infers the shapes itself. KV exports keep theirs (and their bytes).
        del proto.graph.value_info[:]
    produced = _default_opset(proto)
    if opset is not None and produced != opset:
        raise GenError(
            f"cannot export at opset {opset}: torch's exporter could not convert this model to it "
            f"(it fell back to opset {produced}); choose another --opset or leave it out"
        )
    return proto


def _forget_rnn_kernels() -> None:
    """Clear the dispatch caches of nn.GRU's and nn.LSTM's operators before a trace.

    For dynamic shapes, torch's exporter swaps in a decomposition of these operators that
    keeps the sequence length symbolic, but (torch 2.13) an operator whose kernel was looked
    up before, e.g. by an earlier export in the process, keeps its cached kernel, which fixes
    the length to the sample's: the graph would then take only inputs of that length.
    """
    for operator in (torch.ops.aten.gru.input, torch.ops.aten.lstm.input):
        operator._dispatch_cache.clear()


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def add_metadata(proto: onnx.ModelProto, model_document: dict, tokenizer_document: dict,
                 training_document: dict | None = None, chat_template: str | None = None) -> None:
    """Write the gen metadata_props (replacing any from an earlier pass)."""
    values = {
        FORMAT_KEY: str(FORMAT_VERSION),
        MODEL_KEY: json.dumps(model_document, sort_keys=True),
        TOKENIZER_KEY: json.dumps(tokenizer_document, sort_keys=True),
    }
    if training_document is not None:
        values[TRAINING_KEY] = json.dumps(training_document, sort_keys=True)
    if chat_template is not None:
        values[CHAT_TEMPLATE_KEY] = chat_template
    kept = [entry for entry in proto.metadata_props if entry.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


def model_document(model_name: str, config: dict, cache: CacheShape | StateShape | None, parameters: int,
                   static_cache: bool = False, attention: bool = False) -> dict:
    if isinstance(cache, StateShape):  # no KV cache (n_layer 0); the state's names and shapes instead
        return {**model_document(model_name, config, None, parameters), "cache": STATE,
                "state": {name: list(shape) for name, shape in cache.shapes.items()}}
    document = {
        "name": model_name,
        "config": config,
        "parameters": parameters,
        "block_size": config["block_size"],
        "vocab_size": config["vocab_size"],
        "n_layer": cache.n_layer if cache else 0,
        "n_head": cache.n_head if cache else 0,
        "head_size": cache.head_size if cache else 0,
    }
    if static_cache:  # the cache tensors hold block_size positions, updated in place
        document["cache_capacity"] = config["block_size"]
    if attention:  # the graph also outputs attention.{i} (gen.runtime.artifact.attention_names)
        document["attention"] = True
    return document


def write_single_file(proto: onnx.ModelProto, path: Path) -> None:
    """Save `proto` at `path` as one self-contained file: weights inline, no .data sidecar."""
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise GenError(
            f"the model is {proto.ByteSize() / 2**30:.1f} GiB; a single-file ONNX model must stay under 2 GiB"
        )
    for initializer in proto.graph.initializer:
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            raise GenError(f"initializer {initializer.name} points at external data; cannot write one file")
    onnx.save_model(proto, os.fspath(path), save_as_external_data=False)


def check_export_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    """The export's path, or a GenError if writing there would destroy something: an
    existing file (without `overwrite`), or anything inside a checkpoint folder, which
    the next checkpoint write replaces whole (and whose model.safetensors it could be)."""
    path = check_writable_destination(path, "export")
    if path.is_dir():
        raise GenError(f"{str(path)!r} is a folder; give the export a file name, e.g. {str(path / 'model.onnx')!r}")
    refuse_inside_checkpoint(path)
    if os.path.lexists(path) and not overwrite:
        raise GenError(f"{str(path)!r} already exists; give --overwrite to replace it, or choose another name")
    return path


def refuse_inside_checkpoint(path: Path) -> None:
    """A GenError if `path` lies inside a checkpoint folder, which training replaces whole."""
    from gen.core.training.checkpoint import is_checkpoint

    inside = next((folder for folder in path.parents if is_checkpoint(folder)), None)
    if inside is not None:
        raise GenError(f"{str(path)!r} is inside the checkpoint folder {str(inside)!r}, which training replaces "
                       f"whole; export to a path outside it")


def writes_fused_graph(model: torch.nn.Module, portable: bool) -> bool:
    """Whether the export is gen.export.gpt_graph's fused decode graph: for a class that
    declares `fused_graph = "gpt"` in its own body (gen's GPT; a subclass does not inherit the
    declaration, since it may compute something else), unless asked for the portable graph
    (`portable`, or an explicit opset, which only that graph offers)."""
    return vars(type(model)).get("fused_graph") == "gpt" and not portable


def export_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    tokenizer_document: dict,
    options: ExportOptions = ExportOptions(),
    model_name: str | None = None,
    validation_ids: Sequence[int] | None = None,
    validation_source: str = "",
    training: dict | None = None,
) -> ExportResult:
    """Export `model` (with its tokenizer document {"name", "state"}) to `path`, as `options` say.

    gen's GPT is written as a fused decode graph (gen.export.gpt_graph) unless
    `options.portable` (or an `options.opset`) asks for torch's exporter. `training` (the
    checkpoint's step, losses and data, see `training_document`) is recorded in the file for
    `gen info`.

    `validation_ids` (token ids, described by `validation_source`), when given with
    `options.quantize`, are scored by both the fp32 and the quantized model to report the loss
    the quantization costs. The model is moved to the
    CPU, float32 and eval mode in place (as `Module.to` does).
    """
    say = options.say
    path = check_export_destination(path, options.overwrite)
    if options.chat_template is not None:  # a template that fails or leaves the sandbox is refused now
        from gen.runtime.chat import check_template

        check_template(options.chat_template)
    if options.quantize is not None and options.quantize not in QUANTIZATIONS:
        raise GenError(f"unknown quantization {options.quantize!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    # The file's contract is float32 on any device; the export traces and verifies on the CPU.
    model = model.to(device="cpu", dtype=torch.float32).eval()
    config = model_config(model)
    name = model_name or registered_model_name(model)
    tokenizer = tokenizer_from_dict(tokenizer_document)  # fails early on a bad document
    if tokenizer.vocab_size > config["vocab_size"]:
        raise GenError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config['vocab_size']}"
        )
    cache = cache_shape(model)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    layout = _layout(cache)
    fused = writes_fused_graph(model, options.portable or options.opset is not None)
    if options.static_cache and not fused:
        raise GenError("a fixed-capacity cache (--static-cache) is written for gen's gpt model only, and not "
                       "with --portable or --opset")
    if options.attention and not fused:
        raise GenError("attention outputs (--attention) are written for gen's gpt model only, and not with "
                       "--portable or --opset")
    if fused:
        from gen.export.gpt_graph import build_gpt_graph

        kind = f"a fixed-capacity cache of {config['block_size']} positions" if options.static_cache else layout
        say(f"[1/4] writing the decode graph of {name} ({parameters:,} parameters, {kind}) with "
            f"onnxruntime's fused operators (--portable for torch's operator-by-operator graph)...")
        proto = build_gpt_graph(model, capacity=config["block_size"] if options.static_cache else None,
                                attention=options.attention)
    else:
        say(f"[1/4] tracing {name} ({parameters:,} parameters, {layout}) and translating to ONNX...")
        proto = to_onnx_proto(model, cache, options.opset)
    produced_opset = _default_opset(proto)

    say(f"[2/4] adding gen metadata and checking the graph with onnx.checker (full check, opset {produced_opset})")
    document = model_document(name, config, cache, parameters, options.static_cache, options.attention)
    add_metadata(proto, document, tokenizer_document, training, options.chat_template)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise GenError(f"the exported graph fails onnx.checker: {first_line(error)}") from None

    # The file is written under a temporary name beside the output and renamed into
    # place at the end, so a failed export or verification never leaves half a file.
    with replace_file_atomically(path) as output:
        write_single_file(proto, output)
        say(f"[3/4] serialised to one file: {output.stat().st_size / 1e6:.2f} MB, no external data")

        max_diff = None
        if options.verify:
            from gen.export.verify import verify_export

            past_text = ", with and without a past" if cache else ""
            say(f"[4/4] verifying onnxruntime against torch (batch 1 and 3, lengths 1, 7 and {config['block_size']}{past_text})")
            max_diff = verify_export(model, output, progress=say)
        else:
            say("[4/4] verification skipped (--no-verify)")

        quantized = {}
        if options.quantize is not None:
            with replace_file_atomically(output) as quantized_output:  # takes the fp32 file's place
                quantized = quantize_file(
                    output, quantized_output, options.quantize, validation_ids=validation_ids,
                    validation_source=validation_source, progress=say,
                )
    result = ExportResult(path, path.stat().st_size, produced_opset, max_diff, quantized)
    say(f"wrote {path} ({result.size_bytes / 1e6:.2f} MB); run it with: gen run {path}")
    return result


def loaded_checkpoint(checkpoint, say: Progress):
    """A checkpoint directory loaded on the CPU (saying so), or an already loaded checkpoint as it is."""
    if isinstance(checkpoint, (str, os.PathLike)):
        from gen.core.training.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(checkpoint, device="cpu")
        say(f"loaded checkpoint {checkpoint.path} ({checkpoint.model_name}, step {checkpoint.step})")
    return checkpoint


def export_onnx(checkpoint, path: str | os.PathLike, *, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export a checkpoint (a directory written by `gen train`, or a loaded checkpoint) to `path`."""
    check_export_destination(path, options.overwrite)
    checkpoint = loaded_checkpoint(checkpoint, options.say)
    validation_ids, validation_source = None, ""
    if options.quantize:
        options.say(f"reading the checkpoint's validation data (to measure what {options.quantize} costs)")
        validation_ids, validation_source = validation_ids_of(checkpoint)
    return export_model(
        checkpoint.model,
        path,
        tokenizer_document=checkpoint.tokenizer_document,
        options=options,
        model_name=checkpoint.model_name,
        validation_ids=validation_ids,
        validation_source=validation_source,
        training=training_document(checkpoint),
    )


def training_document(checkpoint) -> dict:
    """What an export records of the checkpoint it came from (the gen.training metadata)."""
    return {
        "step": checkpoint.step,
        "val_loss": checkpoint.val_loss,
        "best_val_loss": checkpoint.best_val_loss,
        "data": checkpoint.train_args.get("data"),
    }

