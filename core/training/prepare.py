"""`gen prepare`: a corpus of any size into a folder of token shards (numpy and tqdm; no torch).

    gen prepare --data corpus/ --tokenizer bpe:vocab_size=4096 --out data/corpus --workers 4
    gen train --data data/corpus ...

Read top to bottom: the sources (text files, Hugging Face datasets files, nanoGPT's
.bin files), each streamed in chunks of about CHUNK_BYTES so the corpus is never whole
in memory; the tokenizer, learned from a bounded sample; the encoding, on --workers
processes, in order, with at most two chunks per worker in flight; the `ShardWriter`;
and `prepare`, which puts them together.

The folder's format is gen.core.shards'. It is written into a temporary folder beside
--out and renamed into place only once every shard and the index are complete
(gen.core.files), so an interrupted prepare leaves no index pointing at partial shards:
--out is as it was, and the next prepare removes what the interrupted one left and starts
again.

A tokenizer that learns from text (char, bpe) learns from the first SAMPLE_BYTES of the
stream: the whole corpus when it is smaller, so a corpus that gen train can also read
gets the same tokenizer, and the same ids, either way. Past that, a char vocabulary can
miss a rare character that comes later; encoding then stops and says so (byte or bpe
encode any text).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from gen.core.data import TRAIN_FRACTION, load_dataset, train_tokenizer
from gen.core.errors import GenError
from gen.core.files import replace_directory_atomically
from gen.core.limits import format_bytes
from gen.core.reading import check_regular_file
from gen.core.shards import (
    INDEX_FILE,
    INDEX_FORMAT,
    SHARD_NAME,
    SHARD_TOKENS,
    is_token_folder,
    token_dtype,
)
from gen.core.tokenizer import Tokenizer, tokenizer_from_dict

CHUNK_BYTES = 4 * 2**20  # text read, encoded and written at a time
SAMPLE_BYTES = 32 * 2**20  # what a tokenizer that learns from text learns from
DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}


# --- sources ----------------------------------------------------------------------------


@dataclass
class Source:
    """A corpus as a stream of text chunks; `chunks()` yields (text, progress made) pairs."""

    description: str
    chunks: Callable[[], Iterator[tuple[str, int]]]
    total: int | None  # the progress a whole pass makes (bytes, or records), when known
    unit: str


def _text_chunks(paths: list[Path]) -> Iterator[tuple[str, int]]:
    """The files' text one after another, a newline between two files where the first lacks
    one; each chunk ends at a line's end where the line is shorter than a chunk."""
    previous_ended_line = True
    for path in paths:
        with open(path, "rb") as file:
            carry = b""
            while True:
                block = file.read(CHUNK_BYTES)
                data = carry + block
                if not data:
                    break
                cut = len(data) if not block else _cut(data)
                carry = data[cut:]
                text = _decode(data[:cut], path)
                if not previous_ended_line and text:
                    text = "\n" + text
                if text:
                    previous_ended_line = text.endswith("\n")
                yield text, len(block)
                if not block:
                    break


def _cut(data: bytes) -> int:
    """Where to end a chunk of `data`: after its last newline, else before its last character
    (which may be cut in half; UTF-8's continuation bytes are 10xxxxxx)."""
    newline = data.rfind(b"\n")
    if newline >= 0:
        return newline + 1
    start = len(data) - 1  # the first byte of the last character
    while start > 0 and data[start] & 0xC0 == 0x80:
        start -= 1
    return start if start > 0 else len(data)


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise GenError(f"the corpus file {str(path)!r} is not UTF-8 text ({error.reason} near byte "
                       f"{error.start} of a chunk); give UTF-8 text files") from None


def _dataset_chunks(kind: str, paths: list[Path], column: str) -> Iterator[tuple[str, int]]:
    """The records' `column`, a newline between two records, streamed by Hugging Face datasets."""
    try:
        import datasets
    except ImportError:
        raise GenError("reading parquet, arrow or jsonl files needs Hugging Face datasets: "
                       "pip install 'gen[datasets]'") from None
    datasets.disable_progress_bars()
    try:
        records = datasets.load_dataset(kind, data_files=[str(path) for path in paths], split="train", streaming=True)
    except Exception as error:  # datasets raises many kinds for a file it cannot read
        raise GenError(f"Hugging Face datasets cannot read {str(paths[0])!r} as {kind} ({type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''})") from None
    parts, size, count = [], 0, 0
    for record in records:
        if column not in record:
            raise GenError(f"the records of {str(paths[0])!r} have no column {column!r}; they have "
                           f"{', '.join(map(repr, record))}: name the text with --text-column")
        text = record[column]
        if not isinstance(text, str):
            raise GenError(f"the column {column!r} of {str(paths[0])!r} holds {type(text).__name__}, not text; "
                           f"name the text with --text-column")
        parts.append(text if text.endswith("\n") else text + "\n")
        size += len(parts[-1])
        count += 1
        if size >= CHUNK_BYTES:
            yield "".join(parts), count
            parts, size, count = [], 0, 0
    if parts:
        yield "".join(parts), count


def open_source(data: str, text_column: str) -> Source:
    """--data as a Source: a text file, a folder of text (or datasets) files, a glob, a file
    of parquet/arrow/jsonl records. (nanoGPT's folders are read by `prepare` itself.)"""
    path = Path(data)
    if any(character in data for character in "*?["):
        paths = sorted(Path(match) for match in glob.glob(data, recursive=True) if Path(match).is_file())
        if not paths:
            raise GenError(f"no file matches {data!r}; give a text file, a folder or a pattern that matches files")
    elif path.is_dir():
        if (path / INDEX_FILE).exists():
            raise GenError(f"{data!r} is already a prepared folder of token shards; train on it with "
                           f"gen train --data {data}")
        paths = sorted(file for file in path.rglob("*") if file.is_file()
                       and not any(part.startswith(".") for part in file.relative_to(path).parts))
        if not paths:
            raise GenError(f"the folder {data!r} holds no files; give a folder of text files")
    elif path.exists():
        paths = [path]
    else:
        raise GenError(f"the corpus {data!r} does not exist; give a text file, a folder, a glob pattern, or "
                       f"parquet/arrow/jsonl files")
    for file in paths:
        check_regular_file(file, "corpus file", 2**62)
    kinds = {DATASET_SUFFIXES.get(file.suffix.lower()) for file in paths}
    if kinds - {None} and len(kinds) > 1:
        raise GenError(f"{data!r} mixes text files with dataset files ({', '.join(sorted(kinds - {None}))}); "
                       f"give one kind at a time")
    kind = kinds.pop()
    if kind is not None:
        return Source(f"{len(paths)} {kind} file(s) of {data!r}, column {text_column!r}",
                      lambda: _dataset_chunks(kind, paths, text_column), None, "records")
    total = sum(file.stat().st_size for file in paths)
    return Source(f"{len(paths)} text file(s) of {data!r}", lambda: _text_chunks(paths), total, "B")


def _sample(source: Source) -> str:
    """The first SAMPLE_BYTES (about) of the source's text: what a tokenizer learns from."""
    parts, size = [], 0
    for text, _ in source.chunks():
        parts.append(text)
        size += len(text)
        if size >= SAMPLE_BYTES:
            break
    return "".join(parts)


# --- encoding on several processes ----------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer_document: dict) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_dict(tokenizer_document)


def _encode(text: str, dtype: str) -> np.ndarray:
    return np.asarray(_worker_tokenizer.encode(text), dtype=dtype)


def encoded_chunks(chunks: Iterator[tuple[str, int]], tokenizer_document: dict, dtype: str,
                   workers: int) -> Iterator[tuple[np.ndarray, int]]:
    """(ids, progress) for each chunk, in order. With several workers each chunk is encoded in
    a process of its own; at most two chunks per worker wait, so memory stays bounded (a
    Pool's imap would read the whole source ahead)."""
    if workers == 1:
        _start_worker(tokenizer_document)
        for text, advance in chunks:
            yield _encode(text, dtype), advance
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (tokenizer_document,)) as pool:
        pending = deque()
        for text, advance in chunks:
            pending.append((pool.apply_async(_encode, (text, dtype)), advance))
            if len(pending) >= 2 * workers:
                result, done = pending.popleft()
                yield result.get(), done
        while pending:
            result, done = pending.popleft()
            yield result.get(), done


# --- writing shards ---------------------------------------------------------------------


class ShardWriter:
    """Token ids appended to shard files of `shard_tokens` ids each in `folder`, with the
    sha256, count and largest id of each (the index's entries)."""

    def __init__(self, folder: Path, dtype: str, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.entries: list[dict] = []
        self.file = None

    def add(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None:
                self._open()
            room = self.shard_tokens - self.tokens
            part, ids = ids[:room], ids[room:]
            data = part.astype(self.dtype, copy=False).tobytes()
            self.file.write(data)
            self.digest.update(data)
            self.tokens += len(part)
            self.max_id = max(self.max_id, int(part.max()))
            if self.tokens == self.shard_tokens:
                self._close()

    def finish(self) -> list[dict]:
        if self.file is not None:
            self._close()
        return self.entries

    def _open(self) -> None:
        name = SHARD_NAME.format(len(self.entries))
        self.file = open(self.folder / name, "wb")
        self.name, self.digest, self.tokens, self.max_id = name, hashlib.sha256(), 0, -1

    def _close(self) -> None:
        self.file.close()
        self.file = None
        self.entries.append({"file": self.name, "tokens": self.tokens, "sha256": self.digest.hexdigest(),
                             "max_id": self.max_id})


# --- gen prepare ------------------------------------------------------------------------


@dataclass
class Prepared:
    out: Path
    tokens: int
    train_tokens: int
    shards: int
    dtype: str
    seconds: float
    source_bytes: int | None


def prepare(data: str, tokenizer_spec: str, out: str | os.PathLike, *, workers: int = 1,
            text_column: str = "text", shard_tokens: int = SHARD_TOKENS, overwrite: bool = False,
            progress: bool = True, say: Callable[[str], None] = print) -> Prepared:
    """Write the token shards of `data` and their index into the folder `out`."""
    from tqdm import tqdm

    started = time.perf_counter()
    out = Path(out)
    _check_out(out, overwrite)
    if is_token_folder(data):  # nanoGPT's folder: its ids as they are, under an index with sums
        dataset = load_dataset(data, tokenizer_spec=tokenizer_spec, progress=progress)
        spec = dataset.tokenizer_spec
        document, train_tokens = dataset.tokenizer_document, len(dataset.train_ids)
        dtype = token_dtype(dataset.tokenizer.vocab_size)
        encoded = ((split[start:start + CHUNK_BYTES], min(CHUNK_BYTES, len(split) - start))
                   for split in (dataset.train_ids, dataset.val_ids) for start in range(0, len(split), CHUNK_BYTES))
        total, unit, sample = len(dataset.train_ids) + len(dataset.val_ids), "tokens", None
        description = f"nanoGPT's train.bin and val.bin in {data!r}"
    else:
        source = open_source(data, text_column)
        tokenizer_class = _tokenizer_class(tokenizer_spec)
        sample = _sample(source) if getattr(tokenizer_class, "learns_from_text", True) is not False else ""
        tokenizer, document = train_tokenizer(sample, tokenizer_spec, progress=progress)
        spec, train_tokens, dtype = tokenizer_spec, None, token_dtype(tokenizer.vocab_size)
        encoded = encoded_chunks(source.chunks(), document, dtype, workers)
        total, unit, description = source.total, source.unit, source.description

    with replace_directory_atomically(out) as temporary:
        writer = ShardWriter(temporary, dtype, shard_tokens)
        with tqdm(total=total, unit=unit, unit_scale=True, desc="preparing", dynamic_ncols=True,
                  disable=None if progress else True) as bar:
            read = 0
            for ids, advance in _explained(encoded, lambda: read, sample):
                writer.add(ids)
                bar.update(advance)
                read += advance
        entries = writer.finish()
        tokens = sum(entry["tokens"] for entry in entries)
        if tokens == 0:
            raise GenError(f"the corpus {data!r} is empty: it gave no tokens; give --data some text")
        if train_tokens is None:
            train_tokens = int(tokens * TRAIN_FRACTION)  # as gen.core.data.split_tokens cuts
        index = {"format": INDEX_FORMAT, "source": str(data), "tokenizer": document, "tokenizer_spec": spec,
                 "dtype": dtype, "train_tokens": train_tokens, "shards": entries}
        (temporary / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    seconds = time.perf_counter() - started
    result = Prepared(out, tokens, train_tokens, len(entries), dtype, seconds, total if unit == "B" else None)
    rate = f", {result.source_bytes / seconds / 1e6:,.2f} MB/s" if result.source_bytes else ""
    say(f"wrote {out}: {tokens:,} {spec} tokens ({train_tokens:,} train, {tokens - train_tokens:,} val) in "
        f"{len(entries)} {dtype} shard(s), {format_bytes(tokens * np.dtype(dtype).itemsize)}, from {description}; "
        f"took {seconds:.1f} s{rate}; train with: gen train --data {out}")
    return result


def _explained(encoded: Iterator, read: Callable[[], int], sample: str | None) -> Iterator:
    """`encoded`, with a text the tokenizer cannot encode explained: where, and why (a
    vocabulary learned from the sample lacks what comes later)."""
    try:
        yield from encoded
    except GenError as error:
        if not sample:
            raise
        raise GenError(f"{error}, in the text after the first {read():,} bytes or records; the tokenizer learned "
                       f"its vocabulary from the first {len(sample):,} characters alone: prepare with byte or bpe, "
                       f"which encode any text") from None


def _tokenizer_class(spec: str):
    from gen.core.registry import get_registry
    from gen.core.specs import parse_spec

    name, _ = parse_spec(spec, "tokenizer")
    return get_registry().entry("tokenizer", name).load()


def _check_out(out: Path, overwrite: bool) -> None:
    """--out is new, or (with --overwrite) holds what an earlier gen prepare wrote and nothing else."""
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise GenError(f"--out {str(out)!r} is a file; give a folder for the shards")
    names = os.listdir(out)
    if not names:
        return
    if not overwrite:
        raise GenError(f"--out {str(out)!r} already holds files; give --overwrite to replace a prepared folder, "
                       f"or choose another --out")
    ours = {INDEX_FILE} | {name for name in names if name.startswith("shard-") and name.endswith(".bin")}
    foreign = sorted(set(names) - ours)
    if foreign:
        raise GenError(f"--out {str(out)!r} holds {', '.join(foreign[:3])}, which gen prepare did not write; "
                       f"--overwrite replaces only a prepared folder: choose another --out")

