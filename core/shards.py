"""Token shards on disk: the folder `gen prepare` writes and `gen train --data DIR` reads (no torch).

A prepared folder holds a corpus's token ids, in order, in shard files of raw
little-endian integers (`shard-00000.bin`, ...; uint16 where the vocabulary has at most
65,536 tokens, else uint32), and `index.json`, written last:

    {"format": 1, "source": "corpus/*.txt", "tokenizer": {"name": ..., "state": ...},
     "tokenizer_spec": "bpe:vocab_size=512", "dtype": "uint16", "train_tokens": 900000,
     "shards": [{"file": "shard-00000.bin", "tokens": 1000000, "sha256": "...", "max_id": 511}]}

The shards one after the other are the corpus's token stream; its first `train_tokens`
ids train and the rest validate, cut 90/10 as gen.core.data cuts a text file, so the
same text and tokenizer give the same two splits either way.

A nanoGPT data folder (`train.bin` and `val.bin` of uint16 ids, as its prepare.py writes
them, and `meta.pkl` for a character-level vocabulary) is read as it is: the same kind
of stream, train.bin then val.bin.

Nothing here loads a shard. Batches are windows read from np.memmap maps of the shards,
as nanoGPT's train.py reads train.bin: only the pages a window touches are read, so
resident memory stays flat however large the corpus is. Every shard is mapped once and
kept, as nanoGPT keeps its one map, unless the address space is limited (RLIMIT_AS,
`ulimit -v`): then maps take at most a quarter of the limit (MAPPED_BYTES), and the windows
of the shards past it are read from their files (np.fromfile), so a corpus of any size
trains under the limit. (Closing and opening maps as batches wander was tried: about
0.2 ms a map on a busy machine, 2 ms a batch.)

What is checked before training, each failure one GenError line (`check_tokens`):
- always: every shard is a regular file of exactly the bytes the index gives it (what an
  interrupted copy or a cut-off download leaves behind), the corpus is not empty, and the
  largest id the index records fits the vocabulary;
- with `verify` (`gen train --verify`): every shard's sha256 and largest id, read in full.
  That reads and hashes the whole corpus (sha256 runs at well under 1 GB/s a core, and a
  cold disk is slower still) at every start and resume, which is why it is asked for, not
  the default;
- a nanoGPT folder records no sums and no largest id: its ids are scanned at every start
  (the same full read), since an id past the vocabulary would crash training later.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgspec
import numpy as np

from gen.core.errors import GenError
from gen.core.limits import check_fits
from gen.core.reading import check_regular_file, load_json, load_plain_pickle, validate
from gen.core.tokenizer import Tokenizer, tokenizer_from_dict

INDEX_FILE = "index.json"
INDEX_FORMAT = 1
SHARD_NAME = "shard-{:05d}.bin"
SHARD_TOKENS = 64 * 2**20  # ids per shard file gen prepare writes by default (128 MB of uint16)
NANOGPT_FILES = ("train.bin", "val.bin")
NANOGPT_META = "meta.pkl"
NANOGPT_DTYPE = "uint16"  # nanoGPT's prepare.py writes np.uint16 (GPT-2's 50,257 ids fit)
DTYPES = ("uint16", "uint32")
READ_BLOCK = 1 << 24  # ids read at a time when a shard is scanned in full
MAPPED_BYTES_UNLIMITED = 2**62


def _mapping_budget() -> int:
    """The bytes of shards one process maps: all of them, unless its address space is
    limited, then a quarter of the limit (the rest is torch's, Python's and the model's)."""
    try:
        import resource

        limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):  # no RLIMIT_AS here (Windows)
        return MAPPED_BYTES_UNLIMITED
    return MAPPED_BYTES_UNLIMITED if limit == resource.RLIM_INFINITY else limit // 4


MAPPED_BYTES = _mapping_budget()  # the most bytes of shards one process keeps mapped


def token_dtype(vocab_size: int) -> str:
    """The narrowest dtype of the shards that holds every id of the vocabulary."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


# --- the index ------------------------------------------------------------------------


class ShardEntry(msgspec.Struct):
    file: str  # a file name inside the folder
    tokens: int
    sha256: str
    max_id: int  # the largest id in the shard (-1 for an empty one)


class ShardIndex(msgspec.Struct):
    format: int
    source: str  # what --data said to gen prepare
    tokenizer: dict  # {"name", "state"}, as checkpoints carry it
    tokenizer_spec: str  # the --tokenizer it was made from, recorded as a run's --tokenizer
    dtype: str
    train_tokens: int
    shards: list[ShardEntry]


def is_token_folder(data: str | os.PathLike) -> bool:
    """Whether `--data` names a folder of token shards: gen prepare's, or nanoGPT's."""
    path = Path(data)
    return path.is_dir() and ((path / INDEX_FILE).exists() or all((path / name).exists() for name in NANOGPT_FILES))


def _check_index(index: ShardIndex, source: str) -> None:
    """What msgspec's types do not say: a known format and dtype, names inside the folder,
    counts that add up."""
    if index.format != INDEX_FORMAT:
        raise GenError(f"{source} has format {index.format}, and this gen reads format {INDEX_FORMAT}; "
                       f"prepare the corpus again with this gen")
    if index.dtype not in DTYPES:
        raise GenError(f"{source} gives dtype {index.dtype!r}; it must be one of {', '.join(DTYPES)}")
    for entry in index.shards:
        if entry.file != Path(entry.file).name or entry.file.startswith(".") or entry.tokens < 0:
            raise GenError(f"{source} is damaged: shard {entry.file!r} with {entry.tokens} tokens")
    total = sum(entry.tokens for entry in index.shards)
    if not 0 <= index.train_tokens <= total:
        raise GenError(f"{source} is damaged: {index.train_tokens} train tokens of {total}")


# --- the token stream -----------------------------------------------------------------


class ShardedTokens:
    """The ids [start, stop) of a token stream kept in shard files, read through np.memmap.

    Used where gen.core.data's in-memory arrays are: `len()`, slices (`tokens[a:b]`, a new
    int64 array), `np.asarray(tokens)` (the whole view in memory: for a validation split
    that fits), and `windows(starts, length)`, the rows of a training batch.
    """

    def __init__(self, paths: list[Path], lengths: list[int], dtype: str, start: int = 0, stop: int | None = None,
                 maps: dict | None = None):
        self.paths = list(paths)
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (S,) ids per shard
        self.ends = np.cumsum(self.lengths)  # (S,) the stream position just past each shard
        self.dtype = np.dtype(dtype)
        self.start = start
        self.stop = int(self.ends[-1]) if stop is None and len(self.ends) else (stop or 0)
        # shard number -> its np.memmap, shared by the views of one stream, up to mapped_bytes of them
        self.maps = {} if maps is None else maps
        self.mapped_bytes = MAPPED_BYTES

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self, start: int, stop: int) -> "ShardedTokens":
        """The ids [start, stop) of this view, as a view of the same shards."""
        view = ShardedTokens(self.paths, self.lengths, self.dtype.name, self.start + start, self.start + stop,
                             self.maps)
        view.mapped_bytes = self.mapped_bytes
        return view

    def _mapped(self, shard: int) -> np.memmap | None:
        """Shard `shard` mapped (once, then kept), or None past `mapped_bytes` of maps."""
        mapped = self.maps.get(shard)
        if mapped is None:
            size = int(self.lengths[shard]) * self.dtype.itemsize
            if sum(m.nbytes for m in self.maps.values()) + size > self.mapped_bytes:
                return None
            mapped = self.maps[shard] = np.memmap(self.paths[shard], dtype=self.dtype, mode="r",
                                                  shape=(int(self.lengths[shard]),))
        return mapped

    def _ids(self, shard: int, offset: int, count: int) -> np.ndarray:
        """`count` ids of shard `shard` from `offset`: from its map, or read from its file."""
        mapped = self._mapped(shard)
        if mapped is not None:
            return mapped[offset:offset + count]
        return np.fromfile(self.paths[shard], dtype=self.dtype, count=count, offset=offset * self.dtype.itemsize)

    def read(self, position: int, count: int) -> np.ndarray:
        """`count` ids from `position` of this view, as int64; a read may span shards."""
        ids = np.empty(count, dtype=np.int64)  # (count,)
        position += self.start
        filled = 0
        while filled < count:
            shard = int(np.searchsorted(self.ends, position, side="right"))
            offset = position - int(self.ends[shard] - self.lengths[shard])
            take = min(count - filled, int(self.lengths[shard]) - offset)
            ids[filled:filled + take] = self._ids(shard, offset, take)
            filled += take
            position += take
        return ids

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """The rows of `length` ids from each of `starts`: (B, length) int64. The rows inside
        one mapped shard are gathered from its map at once; a row across two shards, or of a
        shard past the mapping budget, is read alone."""
        positions = np.asarray(starts, dtype=np.int64) + self.start  # (B,)
        shards = np.searchsorted(self.ends, positions, side="right")  # (B,)
        crossing = positions + length > self.ends[shards]  # (B,) rows that run into the next shard
        rows = np.empty((len(positions), length), dtype=np.int64)  # (B, length)
        offsets = np.arange(length)  # (length,)
        for shard in np.unique(shards[~crossing]):
            mapped = self._mapped(int(shard))
            if mapped is None:  # past the mapping budget: these rows are read alone, below
                crossing |= shards == shard
                continue
            chosen = (shards == shard) & ~crossing
            local = positions[chosen] - (self.ends[shard] - self.lengths[shard])  # (b,) starts inside the shard
            rows[chosen] = mapped[local[:, None] + offsets]  # (b, length)
        for row in np.flatnonzero(crossing):
            rows[row] = self.read(int(positions[row]) - self.start, length)
        return rows

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("token shards are read by slices: tokens[a:b]")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError("token shards are read by contiguous slices")
        count = max(stop - start, 0)
        check_fits(8 * count, f"reading {count:,} tokens of {str(self.paths[0].parent)!r} into memory",
                   "score a smaller split, or prepare a smaller validation set")
        return self.read(start, count)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        ids = self[:]
        return ids if dtype is None else ids.astype(dtype)


# --- opening a folder -----------------------------------------------------------------


@dataclass
class TokenFolder:
    """A folder of token shards, checked: its stream and what it says of its tokenizer."""

    folder: Path
    tokens: ShardedTokens  # the whole stream
    train_tokens: int  # the first train_tokens ids train, the rest validate
    tokenizer_document: dict | None  # {"name", "state"}; None for nanoGPT's GPT-2 ids (no meta.pkl)
    tokenizer_spec: str | None
    max_id: int  # the largest id in the stream

    def splits(self) -> tuple[ShardedTokens, ShardedTokens]:
        return self.tokens.view(0, self.train_tokens), self.tokens.view(self.train_tokens, len(self.tokens))


def scan_shard(path: Path, dtype: str, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """The sha256 of a shard's bytes and its largest id (-1 when empty), read a block at a time."""
    digest = hashlib.sha256()
    largest = -1
    with open(path, "rb") as file:
        while block := file.read(READ_BLOCK * np.dtype(dtype).itemsize):
            digest.update(block)
            ids = np.frombuffer(block, dtype=dtype)
            if len(ids):
                largest = max(largest, int(ids.max()))
            if progress:
                progress(len(block))
    return digest.hexdigest(), largest


def _checked_size(path: Path, tokens: int, dtype: str, folder: Path) -> None:
    expected = tokens * np.dtype(dtype).itemsize
    size = check_regular_file(path, "token shard", 2**62).st_size
    if size != expected:
        raise GenError(
            f"the token shard {str(path)!r} has {size:,} bytes, but the index of {str(folder)!r} gives it "
            f"{tokens:,} {dtype} tokens ({expected:,} bytes): it was cut short or changed after gen prepare "
            f"wrote it; prepare the corpus again"
        )


def open_token_folder(folder: str | os.PathLike, verify: bool = False, progress: bool = False) -> TokenFolder:
    """The prepared (or nanoGPT) folder `folder`, its sizes checked, and with `verify` its
    checksums and largest ids too (see the module's docstring)."""
    folder = Path(folder)
    if (folder / INDEX_FILE).exists():
        return _open_prepared(folder, verify, progress)
    return _open_nanogpt(folder, progress)


def _open_prepared(folder: Path, verify: bool, progress: bool) -> TokenFolder:
    source = f"the index {str(folder / INDEX_FILE)!r}"
    index = validate(load_json(folder / INDEX_FILE, "shard index"), ShardIndex, source)
    _check_index(index, source)
    paths = [folder / entry.file for entry in index.shards]
    for path, entry in zip(paths, index.shards):
        _checked_size(path, entry.tokens, index.dtype, folder)
    if verify:
        with _progress_bar(sum(entry.tokens for entry in index.shards) * np.dtype(index.dtype).itemsize,
                           "verifying shards", progress) as advance:
            for path, entry in zip(paths, index.shards):
                digest, largest = scan_shard(path, index.dtype, advance)
                if digest != entry.sha256 or largest != entry.max_id:
                    raise GenError(
                        f"the token shard {str(path)!r} does not hold what the index of {str(folder)!r} "
                        f"records (its sha256 differs): it was changed after gen prepare wrote it; prepare "
                        f"the corpus again"
                    )
    tokens = ShardedTokens(paths, [entry.tokens for entry in index.shards], index.dtype)
    max_id = max((entry.max_id for entry in index.shards), default=-1)
    return TokenFolder(folder, tokens, index.train_tokens, index.tokenizer, index.tokenizer_spec, max_id)


def _open_nanogpt(folder: Path, progress: bool) -> TokenFolder:
    paths = [folder / name for name in NANOGPT_FILES]
    itemsize = np.dtype(NANOGPT_DTYPE).itemsize
    lengths = []
    for path in paths:
        size = check_regular_file(path, "nanoGPT token file", 2**62).st_size
        if size % itemsize:
            raise GenError(f"{str(path)!r} has {size:,} bytes, an odd number: nanoGPT's .bin files hold uint16 "
                           f"ids, two bytes each; it was cut short or is not one")
        lengths.append(size // itemsize)
    largest = -1
    with _progress_bar(sum(lengths) * itemsize, "scanning nanoGPT's ids", progress) as advance:
        for path in paths:
            largest = max(largest, scan_shard(path, NANOGPT_DTYPE, advance)[1])
    document, spec = None, None
    if (folder / NANOGPT_META).exists():
        meta = folder / NANOGPT_META
        document = {"name": "char", "state": char_tokenizer_from_meta(load_plain_pickle(meta), meta).to_dict()}
        spec = "char"
    return TokenFolder(folder, ShardedTokens(paths, lengths, NANOGPT_DTYPE), lengths[0], document, spec, largest)


def char_tokenizer_from_meta(meta, path) -> Tokenizer:
    """gen's char tokenizer with the ids of nanoGPT's meta.pkl (`itos`: id -> character).

    nanoGPT takes the sorted distinct characters of the corpus, as `char` does, so the ids
    are the same."""
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or not itos:
        raise GenError(f"{path} has no 'itos' table (id -> character); is it a character-level nanoGPT meta.pkl?")
    if sorted(itos) != list(range(len(itos))) or not all(isinstance(c, str) and len(c) == 1 for c in itos.values()):
        raise GenError(f"{path}: 'itos' must map the ids 0 to {len(itos) - 1} to single characters")
    characters = "".join(itos[i] for i in range(len(itos)))
    if len(set(characters)) != len(characters):
        raise GenError(f"{path}: 'itos' maps two ids to the same character")
    stoi = meta.get("stoi")
    if isinstance(stoi, dict) and any(stoi.get(c) != i for i, c in enumerate(characters)):
        raise GenError(f"{path}: 'stoi' and 'itos' disagree")
    # Through the registry, as any plugin's tokenizer: the built-in `char` state is its characters.
    return tokenizer_from_dict({"name": "char", "state": {"characters": characters}})


def same_tokenizer(a: dict, b: dict) -> bool:
    """Whether two tokenizer documents {"name", "state"} describe the same tokenizer."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def check_tokens(folder: TokenFolder, tokenizer: Tokenizer) -> None:
    """Refuse an empty stream, or one with an id past `tokenizer`'s vocabulary."""
    if len(folder.tokens) == 0:
        raise GenError(f"the token folder {str(folder.folder)!r} holds no tokens (an empty corpus); "
                       f"prepare it from a corpus with some text")
    if folder.max_id >= tokenizer.vocab_size:
        raise GenError(
            f"the token folder {str(folder.folder)!r} holds id {folder.max_id}, past the tokenizer's "
            f"{tokenizer.vocab_size} tokens (ids 0 to {tokenizer.vocab_size - 1}): it was made with another "
            f"tokenizer, or changed since; give the tokenizer it was made with, or prepare the corpus again"
        )


class _progress_bar:
    """A tqdm bar of bytes, when tqdm is there and progress is wanted; `advance(n)` otherwise
    does nothing (tqdm comes with the train extra, which every caller of this has)."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.bar = None
        if enabled and total > 64 * 2**20:  # a small folder is checked before a bar could draw
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=description, dynamic_ncols=True)

    def __enter__(self) -> Callable[[int], None]:
        return self.bar.update if self.bar is not None else (lambda count: None)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

