"""The one door every file gen reads goes through (no torch).

A file gen reads may be someone else's, and a few bytes of it can hang gen or make it
allocate gigabytes: `/dev/zero` or a FIFO named as a config, JSON nested 100,000 deep,
an integer of 10,000 digits, a `.npy` header declaring 10^11 elements, a zip member
that inflates a thousandfold. So every reader takes its file through here, and each
of these refuses, in one GenError line naming the file, what is wrong and the limit:

- `check_regular_file`: the path is a regular file (never a FIFO, a device or a
  folder: refused before it is opened) of at most the size limit of its kind;
- `read_text` / `parse_json` / `load_json` / `load_toml` / `json_lines`: the bytes are
  UTF-8, the document is nested at most MAX_DEPTH levels and its integers have at most
  MAX_INTEGER_DIGITS digits;
- `validate`: the values have the types of a declared schema (a msgspec Struct), or
  the error says which field is wrong (`$.model.config.n_layer`);
- `load_plain_pickle`: a pickle (nanoGPT's meta.pkl) yields plain data or is refused unrun;
- `check_npy_header`, `check_zip_members`: the sizes an array or an archive declares
  fit in the file and in memory, checked before anything is built or inflated.

The typed part is msgspec's: one small wheel with no dependencies that validates a
decoded document against a class of typed fields, with errors that name the field.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import stat
import zipfile
from itertools import accumulate
from typing import Iterator, TypeVar

import msgspec

from gen.core.errors import GenError
from gen.core.limits import check_fits, format_bytes

# The most bytes a file of each kind may have: generous for any real file, far below
# what would hurt. A tokenizer travels inside checkpoint configs and ONNX metadata, so
# those kinds leave room for a large Hugging Face tokenizer.json.
KIB, MIB = 1024, 1024 * 1024
SIZE_LIMITS = {
    "TOML config": 1 * MIB,
    "chat template": 1 * MIB,
    "constraint": 16 * MIB,  # a JSON schema or a grammar for --json-schema / --grammar
    "checkpoint config": 256 * MIB,
    "training state": 64 * MIB,
    "tokenizer": 256 * MIB,
    "metrics log": 256 * MIB,
    "ONNX metadata value": 256 * MIB,
    "pickle": 64 * MIB,
    "shard index": 256 * MIB,  # gen prepare's index.json: the tokenizer and a line per shard
    "safetensors header": 100 * MIB,  # safetensors' own limit
    "npy header": 64 * KIB,
    "cache digest": 4 * KIB,
}
MAX_DEPTH = 64  # gen's own documents nest 5 levels; a Hugging Face tokenizer.json 8
MAX_INTEGER_DIGITS = 100  # far past any size, step or seed (2^64 has 20 digits)
MAX_INFLATION = 100  # a compressed zip member may inflate this many times (torch stores its own uncompressed)

Schema = TypeVar("Schema")


def check_regular_file(path: str | os.PathLike, what: str, limit: int) -> os.stat_result:
    """The status of `path`, a regular file of at most `limit` bytes, or a GenError.

    Checked before the file is opened: opening a FIFO for reading waits for a writer,
    and a device such as /dev/zero never ends.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise GenError(f"the {what} {os.fspath(path)!r} does not exist") from None
    except OSError as error:
        raise GenError(f"cannot read the {what} {os.fspath(path)!r}: {error.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise GenError(f"the {what} {os.fspath(path)!r} is a folder, not a file")
    if not stat.S_ISREG(status.st_mode):
        raise GenError(f"the {what} {os.fspath(path)!r} is not a regular file (a device, a pipe or a socket); "
                       f"give a file")
    if status.st_size > limit:
        raise GenError(f"the {what} {os.fspath(path)!r} has {format_bytes(status.st_size)}, more than the "
                       f"{format_bytes(limit)} a {what} may have; is it the right file?")
    return status


def read_bytes(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The bytes of the regular file `path` (see check_regular_file); never more than `limit`,
    even if the file grows while it is read."""
    size = check_regular_file(path, what, limit).st_size
    chunks, total = [], 0
    try:
        with open(path, "rb") as file:
            # (read(n) allocates n bytes at once: ask for what the file holds)
            while chunk := file.read(min(limit + 1 - total, max(size + 1, 1 << 16))):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise GenError(f"the {what} {os.fspath(path)!r} grew past {format_bytes(limit)} "
                                   f"while it was read")
    except OSError as error:
        raise GenError(f"cannot read the {what} {os.fspath(path)!r}: {error.strerror}") from None
    return b"".join(chunks)


def decode_utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise GenError(f"{source} is not UTF-8 text (byte {error.start}: {error.reason})") from None


def read_text(path: str | os.PathLike, what: str, limit: int) -> str:
    """The UTF-8 text of the regular file `path`, of at most `limit` bytes."""
    return decode_utf8(read_bytes(path, what, limit), f"the {what} {os.fspath(path)!r}")


def _bounded_integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise _TooLarge(f"an integer of {digits:,} digits, more than the {MAX_INTEGER_DIGITS} allowed")
    return int(text)


class _TooLarge(ValueError):
    """A limit of this module was passed while parsing (its message says which)."""


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


def _check_depth(text: str, source: str) -> None:
    """Refuse JSON nested more than MAX_DEPTH levels before parsing it (the parser
    recurses, and a document nested 100,000 deep would exhaust its stack)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    if max(accumulate(1 if bracket in "[{" else -1 for bracket in brackets), default=0) > MAX_DEPTH:
        raise GenError(f"{source} is nested more than {MAX_DEPTH} levels deep; is it the right file?")


def parse_json(text: str, source: str):
    """The JSON document in `text` (from `source`, named in errors), within the limits above.

    Python's own parser, so what gen wrote reads back as before (NaN included); only
    the nesting depth and the integers' size are bounded.
    """
    _check_depth(text, source)
    try:
        return json.loads(text, parse_int=_bounded_integer)
    except _TooLarge as error:
        raise GenError(f"{source} holds {error}; is it the right file?") from None
    except json.JSONDecodeError as error:
        raise GenError(f"{source} is not JSON ({error.msg} at line {error.lineno}, "
                       f"column {error.colno})") from None
    except (ValueError, RecursionError) as error:  # a number json itself cannot convert
        raise GenError(f"{source} is not JSON ({error})") from None


def load_json(path: str | os.PathLike, what: str):
    """The JSON document in the file `path`, a `what` (a key of SIZE_LIMITS)."""
    text = read_text(path, what, SIZE_LIMITS[what])
    return parse_json(text, f"the {what} {os.fspath(path)!r}")


def json_lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, object]]:
    """(line number, document) for every non-blank line of the JSON-lines file `path`."""
    text = read_text(path, what, SIZE_LIMITS[what])
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, parse_json(line, f"the {what} {os.fspath(path)!r}: line {number}")


def load_toml(path: str | os.PathLike, what: str = "TOML config") -> dict:
    """The TOML document in the file `path`, within the limits above."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise GenError("reading TOML needs Python 3.11 or newer (or the tomli package)") from None
    text = read_text(path, what, SIZE_LIMITS[what])
    source = f"the {what} {os.fspath(path)!r}"
    try:
        return tomllib.loads(text, parse_float=float)
    except tomllib.TOMLDecodeError as error:
        raise GenError(f"{source} is not valid TOML: {error}") from None
    except (ValueError, RecursionError) as error:  # an integer of thousands of digits
        raise GenError(f"{source} holds a value Python cannot read ({str(error).split(':')[0]})") from None


def validate(document, schema: type[Schema], source: str) -> Schema:
    """`document` (decoded JSON or TOML) as the msgspec Struct `schema`, or a GenError
    naming `source`, the field and what it should be."""
    try:
        return msgspec.convert(document, schema, strict=True)
    except msgspec.ValidationError as error:
        raise GenError(f"{source} is damaged: {error}") from None


# --- pickles: plain data only --------------------------------------------------------

PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that imports nothing: no class or function can be named, so none is called."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it refers to a persistent object")


def _check_plain(value, path) -> None:
    """Refuse anything but plain data, visiting each object once: a pickle's memo lets a
    1 KB file refer to the same list a billion times over ("billion laughs")."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if type(item) not in PLAIN_TYPES:
            raise GenError(f"{path} holds a {type(item).__name__}; only plain data (dicts, lists, strings, "
                           f"numbers) is read from a pickle")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def load_plain_pickle(path: str | os.PathLike):
    """The plain data (dicts, lists, tuples, strings, numbers, booleans, None) in the pickle at
    `path` (nanoGPT's meta.pkl). Anything else is refused with a GenError before it is built:
    a pickle runs code by naming a function or a class to call, and that is what is refused."""
    data = read_bytes(path, "pickle", SIZE_LIMITS["pickle"])
    try:
        value = _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # UnpicklingError, and what a malformed stream raises
        raise GenError(
            f"refused to load {path}: {error}; only plain data (dicts, lists, strings, numbers) is read "
            f"from a pickle, and nothing in it is run"
        ) from None
    _check_plain(value, path)
    return value


# --- binary formats: what they declare, checked before it is built -------------------


def check_npy_header(path: str | os.PathLike, what: str) -> tuple[tuple[int, ...], object]:
    """The shape and dtype a `.npy` file declares, once they are known to fit in the
    file itself (so np.load never allocates for elements that are not there)."""
    import numpy as np

    status = check_regular_file(path, what, 2**62)
    source = f"the {what} {os.fspath(path)!r}"
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in reader:
                raise ValueError(f"format version {version}")
            shape, _, dtype = reader[version](file, max_header_size=SIZE_LIMITS["npy header"])
            data_offset = file.tell()
    except (OSError, ValueError, SyntaxError, TypeError) as error:
        raise GenError(f"{source} is not a readable .npy array ({error})") from None
    count = 1
    for length in shape:
        count *= length
    if count * dtype.itemsize > status.st_size - data_offset:
        raise GenError(f"{source} declares {count:,} elements of {dtype}, more than its "
                       f"{format_bytes(status.st_size)} hold")
    return shape, dtype


def check_zip_members(path: str | os.PathLike, what: str) -> None:
    """Refuse a zip archive (torch's ckpt.pt is one) whose members would inflate past
    memory, or past MAX_INFLATION times their size: read from its directory, before a
    byte is inflated. A file that is no zip is left to its reader."""
    source = f"the {what} {os.fspath(path)!r}"
    check_regular_file(path, what, 2**62)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    total = 0
    for member in members:
        total += member.file_size
        if member.compress_type != zipfile.ZIP_STORED and member.file_size > MAX_INFLATION * max(member.compress_size, 1):
            raise GenError(f"{source} holds {member.filename!r}, which inflates {format_bytes(member.compress_size)} "
                           f"to {format_bytes(member.file_size)}; refused (a zip bomb, or a damaged file)")
    check_fits(total, source + f" ({format_bytes(total)} unpacked)", "is it the right file?")
