"""The ONNX artifact contract that `gen export` writes and `gen run` reads (no torch, no onnx).

One `model.onnx` file holds the graph, the weights and three `metadata_props`:

- `gen.format`:    an integer, FORMAT_VERSION when written; the runtime refuses newer ones.
- `gen.model`:     JSON {"name": model plugin, "config": its config, "block_size",
                   "vocab_size", "n_layer", "n_head", "head_size"}; the last three describe
                   the KV cache and are 0 for a model exported without one. A model whose
                   cache is a fixed-size state (gen.core.model) adds "cache": "state" and
                   "state": {name: shape without the batch axis}, e.g. {"h": [1, 64]}.
- `gen.tokenizer`: JSON {"name": tokenizer plugin, "state": its to_dict()}.

An export may carry `gen.chat_template`: the Jinja source of its chat template, as text (`gen
export --chat-template FILE`; gen.runtime.chat; `gen serve` uses it for /v1/chat/completions).

For `gen info`, an export also records `gen.model` "parameters" (the model's
parameter count) and `gen.training`, JSON {"step", "val_loss", "best_val_loss",
"data"} of the checkpoint it came from. The runtime needs neither; a file without
them runs all the same.

Graph inputs are `input_ids` int64 [batch, sequence], `attention_mask` int64
[batch, past_sequence + sequence] and, for a model with a KV cache,
`past_key_values.{i}.key` / `.value` float32 [batch, heads, past_sequence, head_size];
outputs are `logits` float32 [batch, sequence, vocab] and `present.{i}.key` / `.value`.
A state model has instead `past_state.{name}` float32 [batch, *shape] inputs and
`present_state.{name}` outputs of the same shapes (no sequence axis: the state after the
new tokens replaces the one before).

`read_artifact` checks a file before onnxruntime sees it, so that a wrong file gets
a one-line error saying what is wrong with it. It walks only the top level of the
protobuf (a few dozen bytes read, the graph skipped with a seek), which is enough to
tell "not ONNX" from "truncated" and to read the metadata, without the onnx package.
`read_graph_summary` walks one level further, into the graph's nodes and
initializers, for `gen info`.
"""
from __future__ import annotations

import io
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from gen.core.errors import GenError
from gen.core.files import check_utf8_path
from gen.core.reading import SIZE_LIMITS, parse_json

FORMAT_VERSION = 1
# The largest sizes an export's metadata may claim; beyond them a file is damaged or
# hostile (gen would allocate for them before onnxruntime could object).
METADATA_LIMITS = {"block_size": 2**20, "vocab_size": 2**24, "n_layer": 1024, "n_head": 1024, "head_size": 2**16}
FORMAT_KEY = "gen.format"
MODEL_KEY = "gen.model"
TOKENIZER_KEY = "gen.tokenizer"
TRAINING_KEY = "gen.training"  # optional: what the checkpoint recorded (for `gen info`)
CHAT_TEMPLATE_KEY = "gen.chat_template"  # optional: a Jinja chat template, as text

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"
CACHE_POSITION = "cache_position"  # exports with a fixed-capacity cache: the slot the new tokens go to


def past_names(n_layer: int) -> list[str]:
    """Graph input names of the KV cache, layer by layer, key before value."""
    return [f"past_key_values.{i}.{part}" for i in range(n_layer) for part in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    """Graph output names of the updated KV cache, in the order of `past_names`."""
    return [f"present.{i}.{part}" for i in range(n_layer) for part in ("key", "value")]


def attention_names(n_layer: int) -> list[str]:
    """Graph output names of each layer's attention weights (B, n_head, T, P+T), in exports
    made with `gen export --attention` (the metadata's "attention": true)."""
    return [f"attention.{i}" for i in range(n_layer)]


def past_state_names(names) -> list[str]:
    """Graph input names of a fixed-size state, in the order of `names`."""
    return [f"past_state.{name}" for name in names]


def present_state_names(names) -> list[str]:
    """Graph output names of the state after the step, in the order of `past_state_names`."""
    return [f"present_state.{name}" for name in names]


STATE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
STATE_ELEMENTS_LIMIT = 2**24  # floats of one row's state, at most (as for METADATA_LIMITS)


@dataclass
class Artifact:
    """What `read_artifact` learned about a gen ONNX file."""

    path: str
    format_version: int
    model: dict  # the gen.model document
    tokenizer: dict  # the gen.tokenizer document, {"name", "state"}
    training: dict | None = None  # the gen.training document, when the export recorded one
    chat_template: str | None = None  # the gen.chat_template text, when the export carries one

    @property
    def block_size(self) -> int:
        return int(self.model["block_size"])

    @property
    def cache_capacity(self) -> int | None:
        """The positions of a fixed-capacity cache (updated in place), or None for the plain one."""
        return self.model.get("cache_capacity")

    @property
    def has_attention(self) -> bool:
        """Whether the graph also outputs every layer's attention weights (`gen export --attention`)."""
        return self.model.get("attention") is True

    @property
    def cache_kind(self) -> str | None:
        """"kv", "state" or None, as gen.core.model.cache_kind says of the model exported."""
        if self.model.get("cache") == "state":
            return "state"
        return "kv" if self.model["n_layer"] > 0 else None

    @property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """A state model's state tensors: name -> shape without the batch axis ({} for other models)."""
        return {name: tuple(shape) for name, shape in self.model.get("state", {}).items()}


# --- a minimal reader of the protobuf wire format -----------------------------------
#
# A protobuf message is a sequence of fields, each a varint tag (field number << 3 |
# wire type) followed by a varint (wire type 0), 8 bytes (1), a varint length and that
# many bytes (2), or 4 bytes (5). ONNX's ModelProto writers put field 1, ir_version,
# first; its graph is field 7 and its metadata_props field 14.

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_IR_VERSION_FIELD, _GRAPH_FIELD, _OPSET_FIELD, _METADATA_FIELD = 1, 7, 8, 14  # of ModelProto
_NODE_FIELD, _INITIALIZER_FIELD = 1, 5  # of GraphProto
_OP_TYPE_FIELD = 4  # of NodeProto
_DIMS_FIELD, _DATA_TYPE_FIELD = 1, 2  # of TensorProto
_MAX_PLAUSIBLE_IR_VERSION = 100  # ONNX is at 11 in 2025; random bytes are rarely this small


class _NotOnnx(Exception):
    pass


class _Truncated(Exception):
    pass


def _read_varint(file: BinaryIO) -> int | None:
    """The next varint, or None at a clean end of file."""
    result = shift = 0
    while True:
        byte = file.read(1)
        if not byte:
            if shift == 0:
                return None
            raise _Truncated
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _NotOnnx  # no field of a valid message has a varint this long


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) < size:
        raise _Truncated
    return data


def _skip(file: BinaryIO, size: int, file_size: int) -> None:
    if file.tell() + size > file_size:
        raise _Truncated
    file.seek(size, os.SEEK_CUR)


def _fields(message: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a serialised message: an int
    for a varint, bytes for the others."""
    reader = io.BytesIO(message)
    while (tag := _read_varint(reader)) is not None:
        field, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            value = _read_varint(reader)
            if value is None:
                raise _Truncated
        elif wire_type in (_FIXED64, _FIXED32):
            value = _read_exactly(reader, 8 if wire_type == _FIXED64 else 4)
        elif wire_type == _LENGTH_DELIMITED:
            size = _read_varint(reader)
            if size is None:
                raise _Truncated
            value = _read_exactly(reader, size)
        else:
            raise _NotOnnx
        yield field, wire_type, value


def _string_pair(entry: bytes) -> tuple[str, str]:
    """Key and value of a StringStringEntryProto (field 1 key, field 2 value)."""
    pair = {1: "", 2: ""}
    for field, wire_type, value in _fields(entry):
        if wire_type != _LENGTH_DELIMITED:
            raise _NotOnnx
        pair[field] = value.decode("utf-8", "replace")
    return pair[1], pair[2]


def _walk_model(file: BinaryIO, file_size: int, keep: tuple[int, ...] = (_METADATA_FIELD,)) -> dict[int, list[bytes]]:
    """Check the top level of a ModelProto and return the length-delimited fields in
    `keep` (by field number, each a list of their bytes); the others are skipped."""
    first_tag = _read_varint(file)
    if first_tag != (_IR_VERSION_FIELD << 3 | _VARINT):
        raise _NotOnnx
    ir_version = _read_varint(file)
    if ir_version is None:
        raise _Truncated
    if not 1 <= ir_version <= _MAX_PLAUSIBLE_IR_VERSION:
        raise _NotOnnx
    kept: dict[int, list[bytes]] = {field: [] for field in keep}
    has_graph = False
    while (tag := _read_varint(file)) is not None:
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise _NotOnnx
        if wire_type == _VARINT:
            if _read_varint(file) is None:
                raise _Truncated
        elif wire_type == _FIXED64:
            _skip(file, 8, file_size)
        elif wire_type == _FIXED32:
            _skip(file, 4, file_size)
        elif wire_type == _LENGTH_DELIMITED:
            size = _read_varint(file)
            if size is None:
                raise _Truncated
            if field in kept:
                kept[field].append(_read_exactly(file, size))
            else:
                _skip(file, size, file_size)
            has_graph = has_graph or field == _GRAPH_FIELD
        else:
            raise _NotOnnx  # groups (3, 4) and 6, 7 do not occur in ONNX
    if not has_graph:
        raise _Truncated  # the file ends before the graph does
    return kept


def _read_model(path: str | os.PathLike, keep: tuple[int, ...]) -> dict[int, list[bytes]]:
    """The fields `keep` of the ONNX file at `path`; GenError if it is not a whole ONNX file."""
    path = os.fspath(path)
    check_utf8_path(path, "model")
    if not os.path.exists(path):
        raise GenError(f"{path} does not exist; export a model first with `gen export {path}`")
    if os.path.isdir(path):
        raise GenError(f"{path} is a directory; give the path of a .onnx file written by `gen export`")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or never end
        raise GenError(f"{path} is not a regular file; give the path of a .onnx file written by `gen export`")
    file_size = os.path.getsize(path)
    if file_size == 0:
        raise GenError(f"{path} is empty; export the model again with `gen export`")
    try:
        with open(path, "rb") as file:
            return _walk_model(file, file_size, keep)
    except _NotOnnx:
        raise GenError(f"{path} is not an ONNX model; give a file written by `gen export`") from None
    except _Truncated:
        raise GenError(
            f"{path} is truncated ({file_size} bytes, the ONNX data ends early); export it again"
        ) from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of the ONNX file at `path`; GenError if it is not a whole ONNX file."""
    return dict(_string_pair(entry) for entry in _read_model(path, (_METADATA_FIELD,))[_METADATA_FIELD])


# TensorProto.DataType numbers of the types a weight can have.
WEIGHT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 10: "float16", 11: "float64", 16: "bfloat16"}


@dataclass
class GraphSummary:
    """What `gen info` tells about an ONNX graph, read without the onnx package."""

    opset: int | None  # of the default (ai.onnx) domain
    operators: dict[str, int]  # op_type -> nodes of the main graph
    weights: dict[str, int]  # type name -> elements in initializers of rank 1 or more


def _varints(wire_type: int, value) -> list[int]:
    """A repeated integer field's values: one varint, or a packed run of them."""
    if wire_type == _VARINT:
        return [value]
    reader, values = io.BytesIO(value), []
    while (number := _read_varint(reader)) is not None:
        values.append(number)
    return values


def read_graph_summary(path: str | os.PathLike) -> GraphSummary:
    """The opset, operators and weights of the ONNX file at `path` (read whole into memory)."""
    fields = _read_model(path, (_GRAPH_FIELD, _OPSET_FIELD))
    try:
        opset = None
        for entry in fields[_OPSET_FIELD]:
            opset_fields = {field: value for field, _, value in _fields(entry)}
            if opset_fields.get(1, b"") in (b"", b"ai.onnx"):
                opset = opset_fields.get(2)
        operators: dict[str, int] = {}
        weights: dict[str, int] = {}
        for field, _, value in _fields(fields[_GRAPH_FIELD][0]):
            if field == _NODE_FIELD:
                op_type = next((v.decode() for f, _, v in _fields(value) if f == _OP_TYPE_FIELD), "")
                operators[op_type] = operators.get(op_type, 0) + 1
            elif field == _INITIALIZER_FIELD:
                dims, data_type = [], None
                for tensor_field, wire_type, tensor_value in _fields(value):
                    if tensor_field == _DIMS_FIELD:
                        dims += _varints(wire_type, tensor_value)
                    elif tensor_field == _DATA_TYPE_FIELD:
                        data_type = tensor_value
                if dims and data_type in WEIGHT_TYPES:
                    elements = math.prod(dims)
                    weights[WEIGHT_TYPES[data_type]] = weights.get(WEIGHT_TYPES[data_type], 0) + elements
    except (_NotOnnx, _Truncated, UnicodeDecodeError):
        raise GenError(f"{os.fspath(path)} has a damaged graph; export it again") from None
    return GraphSummary(opset, operators, weights)


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Check that `path` is a whole gen ONNX export this runtime can read, and read its metadata."""
    path = os.fspath(path)
    metadata = read_metadata(path)
    missing = [key for key in (FORMAT_KEY, MODEL_KEY, TOKENIZER_KEY) if key not in metadata]
    if missing:
        raise GenError(
            f"{path} is an ONNX model but not a gen export (it lacks the {', '.join(missing)} "
            f"metadata); export it with `gen export`"
        )
    try:
        format_version = int(metadata[FORMAT_KEY])
    except ValueError:
        format_version = 0
    if format_version < 1:
        raise GenError(f"{path} has a malformed {FORMAT_KEY} ({metadata[FORMAT_KEY]!r}); export it again")
    if format_version > FORMAT_VERSION:
        raise GenError(
            f"{path} has gen format version {format_version}, newer than this gen reads "
            f"(up to {FORMAT_VERSION}); upgrade gen (pip install -U gen)"
        )
    documents = {}
    for key in (MODEL_KEY, TOKENIZER_KEY, TRAINING_KEY):
        if key not in metadata:  # the optional training document (the others were checked above)
            continue
        value = metadata[key]
        if len(value) > SIZE_LIMITS["ONNX metadata value"]:
            raise GenError(f"{path} has {key} metadata of {len(value):,} characters, more than the "
                           f"{SIZE_LIMITS['ONNX metadata value']:,} allowed; export it again")
        try:
            documents[key] = parse_json(value, f"its {key} metadata")
        except GenError as error:
            raise GenError(f"{path} has malformed {key} metadata ({error}); export it again") from None
        if not isinstance(documents[key], dict):
            raise GenError(f"{path} has malformed {key} metadata (not a JSON object); export it again")
    model = documents[MODEL_KEY]
    cached = isinstance(model.get("n_layer"), int) and model["n_layer"] > 0
    for key, largest in METADATA_LIMITS.items():
        value = model.get(key)
        smallest = 1 if key in ("block_size", "vocab_size") or cached else 0
        if isinstance(value, bool) or not isinstance(value, int) or not smallest <= value <= largest:
            raise GenError(f"{path} has {MODEL_KEY} metadata without a valid {key} ({smallest} to {largest:,}, "
                           f"got {value!r}); the file was altered or is not from gen export; export it again")
    capacity = model.get("cache_capacity")
    if capacity is not None and (not cached or capacity != model["block_size"]):
        raise GenError(f"{path} has {MODEL_KEY} metadata with a cache_capacity ({capacity!r}) that is not its "
                       f"block_size; the file was altered or is not from gen export; export it again")
    _check_state_metadata(path, model)
    return Artifact(path, format_version, model, documents[TOKENIZER_KEY], documents.get(TRAINING_KEY),
                    metadata.get(CHAT_TEMPLATE_KEY))


def _check_state_metadata(path: str, model: dict) -> None:
    """A state model's "cache" and "state" entries: names the graph can carry, shapes of
    positive sizes (a damaged or hostile file would have gen allocate for them)."""
    if "cache" not in model and "state" not in model:
        return
    state = model.get("state")
    valid = (model.get("cache") == "state" and model["n_layer"] == 0 and isinstance(state, dict) and state
             and all(STATE_NAME.fullmatch(name) and isinstance(shape, list)
                     and all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in shape)
                     and math.prod(shape) <= STATE_ELEMENTS_LIMIT for name, shape in state.items()))
    if not valid:
        raise GenError(f"{path} has {MODEL_KEY} metadata with a malformed state ({state!r}); the file was altered "
                       f"or is not from gen export; export it again")
