"""Training data: the corpus, its tokenizer, and the train/validation token arrays (no torch).

`--data` names a UTF-8 text file, a known corpus (`shakespeare`), or a folder of token
shards (`gen prepare`'s, or nanoGPT's train.bin/val.bin): such a folder is read where it
lies, never into memory, with the tokenizer it was made with (gen.core.shards); all that
follows is about text. A known corpus is
downloaded once into the user cache, checked against its pinned sha256 and written
atomically, so an interrupted or wrong download leaves nothing behind.

The tokenizer is trained on the whole corpus (as nanoGPT does: a char vocabulary
taken from the first 90% alone could miss a character of the last 10%), the corpus
is encoded once, and the token ids are split 90/10 into train and validation
(`split_tokens`, shared by `gen train` and `gen eval`, so both see the same
validation tokens). Trained tokenizers and encoded corpora are cached under the user
cache, keyed by a hash of the text and the tokenizer, so a second run neither
retrains nor re-encodes.

Cache layout (`$XDG_CACHE_HOME/gen`, by default `~/.cache/gen`; delete it at will):
    corpora/tinyshakespeare.txt      downloaded corpora
    tokenizers/<key>.json            trained tokenizers {"name", "state"}
    tokens/<key>.npy                 encoded corpora (uint16, or int32 for large vocabularies)
    tokens/<key>.sha256              {"key", "sha256"}: the key it was encoded for and its digest;
                                     a token file without a matching one is encoded again
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from gen.core.errors import GenError
from gen.core.files import replace_file_atomically
from gen.core.limits import check_fits, format_bytes
from gen.core.shards import ShardedTokens, check_tokens, is_token_folder, open_token_folder, same_tokenizer
from gen.core.reading import check_npy_header, check_regular_file, decode_utf8, load_json, read_bytes, validate
from gen.core.specs import call_with_options, convert_options, describe_options, parse_spec
from gen.core.tokenizer import Tokenizer, tokenizer_from_dict, tokenizer_to_dict

TRAIN_FRACTION = 0.9  # the first 90% of the tokens train, the last 10% validate
CACHE_FORMAT = 1  # bump to invalidate every cached tokenizer and token file
MAX_CORPUS_BYTES = 2**62  # no limit of its own: the memory estimate in read_text decides


@dataclass(frozen=True)
class KnownCorpus:
    filename: str
    url: str
    sha256: str
    url_variable: str  # an environment variable that overrides the URL (mirrors, tests)
    description: str


KNOWN_CORPORA = {
    "shakespeare": KnownCorpus(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        url_variable="GEN_SHAKESPEARE_URL",
        description="Tiny Shakespeare",
    ),
}


def cache_dir() -> Path:
    """The user cache of gen: $XDG_CACHE_HOME/gen, by default ~/.cache/gen."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gen"


# --- reading and downloading the corpus -----------------------------------------------


def _print_progress(received: int, total: int | None, label: str) -> None:
    if total:
        percent = 100 * received / total
        line = f"\rdownloading {label}: {received / 1024:,.0f} of {total / 1024:,.0f} KiB ({percent:.0f}%)"
    else:
        line = f"\rdownloading {label}: {received / 1024:,.0f} KiB"
    print(line, end="", file=sys.stderr, flush=True)


def _fetch(url: str, file, label: str, progress: bool):
    """Stream `url` into `file`; returns (sha256 digest, bytes received, Content-Length or None)."""
    digest = hashlib.sha256()
    received = 0
    try:
        response = urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as error:
        raise GenError(
            f"cannot download {label} from {url}: the server answered {error.code} {error.reason}; "
            f"pass a local copy with --data PATH"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise GenError(
            f"cannot download {label} from {url} ({reason}); are you offline? "
            f"Get the file another way and pass it with --data PATH"
        ) from None
    try:
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := response.read(64 * 1024):
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress:
                    _print_progress(received, total, label)
    except (OSError, http.client.HTTPException) as error:  # a reset or a short read
        raise GenError(
            f"the download of {label} from {url} broke off after {received:,} bytes ({type(error).__name__}); "
            f"try again, or pass a local copy with --data PATH"
        ) from None
    finally:
        if progress and received:
            print(file=sys.stderr)
    return digest, received, total


def download(url: str, destination: Path, sha256: str, label: str = "", progress: bool = True) -> Path:
    """Fetch `url` into `destination` if its sha256 matches; otherwise leave nothing there."""
    label = label or Path(destination).name
    with replace_file_atomically(destination) as temporary:
        with open(temporary, "wb") as file:
            digest, received, total = _fetch(url, file, label, progress)
        if total is not None and received != total:
            raise GenError(
                f"the download of {label} from {url} broke off after {received:,} of {total:,} bytes; "
                f"try again, or pass a local copy with --data PATH"
            )
        if digest.hexdigest() != sha256:
            raise GenError(
                f"the download of {label} from {url} has sha256 {digest.hexdigest()}, expected {sha256}; "
                f"it was not kept; pass a trusted copy with --data PATH"
            )
    return Path(destination)


def corpus_path(data: str, progress: bool = True) -> Path:
    """The file behind `--data`: a known corpus (downloaded once) or a path."""
    known = KNOWN_CORPORA.get(data)
    if known is None:
        return Path(data)
    path = cache_dir() / "corpora" / known.filename
    if not path.exists():
        url = os.environ.get(known.url_variable) or known.url
        download(url, path, known.sha256, label=known.description, progress=progress)
    return path


def read_text(path: Path) -> str:
    """The corpus as text, with a clear error for a missing, non-UTF-8 or empty file."""
    path = Path(path)
    known = ", ".join(KNOWN_CORPORA)
    if not path.exists():
        raise GenError(f"the corpus {str(path)!r} does not exist; give --data a UTF-8 text file or one of: {known}")
    # /dev/zero or a FIFO would be read forever: refused here, before it is opened
    size = check_regular_file(path, "corpus", MAX_CORPUS_BYTES).st_size
    # The text, its UTF-8 decoding (up to 4 bytes a character in Python's str) and the
    # encoded corpus are in memory at once; a file that cannot fit is refused, not read.
    check_fits(8 * size, f"the corpus {str(path)!r} ({format_bytes(size)})",
               "give --data a smaller file (gen reads the whole corpus into memory)")
    text = decode_utf8(read_bytes(path, "corpus", MAX_CORPUS_BYTES), f"the corpus {str(path)!r}")
    if not text:
        raise GenError(f"the corpus {str(path)!r} is empty; give --data a file with some text")
    return text


# --- tokenizers and token caches ------------------------------------------------------


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def train_tokenizer(text: str, spec: str, progress: bool = False) -> tuple[Tokenizer, dict]:
    """The tokenizer named by `spec` (e.g. 'bpe:vocab_size=512'), trained on `text` or
    taken from the cache. Returns the tokenizer and its document {"name", "state"}."""
    from gen.core.registry import get_registry

    name, raw_options = parse_spec(spec, "tokenizer")
    entry = get_registry().entry("tokenizer", name)
    accepted = entry.options()
    options = convert_options(raw_options, accepted, f"tokenizer {name!r}")
    cls = entry.load()

    def build() -> Tokenizer:
        return call_with_options(lambda **kwargs: cls.train(text, **kwargs), options,
                                 f"tokenizer {spec!r}", describe_options(accepted))

    # A tokenizer built from its options alone (one read from a file) is not cached:
    # the cache is keyed by the options, and would miss an edited file.
    if getattr(cls, "learns_from_text", True) is False:
        tokenizer = build()
        return tokenizer, tokenizer_to_dict(name, tokenizer)
    key = _hash(str(CACHE_FORMAT), _hash(text), name, f"{cls.__module__}.{cls.__qualname__}",
                json.dumps(options, sort_keys=True))
    cached = cache_dir() / "tokenizers" / f"{key}.json"
    if os.path.lexists(cached):
        try:
            document = load_json(cached, "tokenizer")
            return tokenizer_from_dict(document), document
        except GenError:
            pass  # a damaged or foreign cache entry: train again and overwrite it
    if progress:
        print(f"training the {spec} tokenizer on {len(text):,} characters (cached for later runs)", file=sys.stderr)
    tokenizer = build()
    document = tokenizer_to_dict(name, tokenizer)
    _write_cache(cached, lambda temporary: temporary.write_text(json.dumps(document), encoding="utf-8"))
    return tokenizer, document


def _write_cache(path: Path, write) -> None:
    """Write a cache file with `write(temporary)`; a cache that cannot be written (a
    read-only folder, a full disk) is skipped with a note: it only saves time."""
    try:
        with replace_file_atomically(path) as temporary:
            write(temporary)
    except GenError as error:
        print(f"note: not cached ({error})", file=sys.stderr)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_tokens(cached: Path, key: str, tokenizer: Tokenizer) -> np.ndarray | None:
    """The token ids cached at `cached`, or None when they cannot be trusted.

    Beside the tokens lies their digest and the key (the digest of the text and the
    tokenizer) they were encoded for: a file put there by anything but this cache (a
    foreign cache, a damaged one, a FIFO) does not match and is encoded again.
    """
    digest_file = cached.with_suffix(".sha256")
    try:
        recorded = validate(load_json(digest_file, "cache digest"), _TokenDigest, str(digest_file))
        shape, dtype = check_npy_header(cached, "token cache")
        if recorded.key != key or len(shape) != 1 or dtype not in (np.uint16, np.int32) \
                or _file_digest(cached) != recorded.sha256:
            return None
        ids = np.load(cached, allow_pickle=False)
    except (GenError, OSError, ValueError):
        return None
    if len(ids) and 0 <= ids.min() and ids.max() < tokenizer.vocab_size:
        return ids
    return None


class _TokenDigest(msgspec.Struct):
    key: str
    sha256: str


def encode_corpus(text: str, tokenizer: Tokenizer, progress: bool = False) -> np.ndarray:
    """The token ids of `text` (1-D, uint16 or int32), encoded once and then cached.

    The cache key is the text and the tokenizer's class and state, so a checkpoint's
    tokenizer finds the tokens that training cached.
    """
    cls = type(tokenizer)
    key = _hash(str(CACHE_FORMAT), _hash(text), f"{cls.__module__}.{cls.__qualname__}",
                json.dumps(tokenizer.to_dict(), sort_keys=True))
    cached = cache_dir() / "tokens" / f"{key}.npy"
    if os.path.lexists(cached):
        ids = _cached_tokens(cached, key, tokenizer)
        if ids is not None:
            return ids
    if progress:
        print(f"encoding {len(text):,} characters (cached for later runs)", file=sys.stderr)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    ids = np.asarray(tokenizer.encode(text), dtype=dtype)

    def write_tokens(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            np.save(file, ids, allow_pickle=False)

    _write_cache(cached, write_tokens)
    if cached.is_file():  # the digest last: a crash between the two leaves a mismatch, not a lie
        digest = json.dumps({"key": key, "sha256": _file_digest(cached)})
        _write_cache(cached.with_suffix(".sha256"), lambda temporary: temporary.write_text(digest, encoding="utf-8"))
    return ids


def split_tokens(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The train and validation token arrays: the first 90% and the last 10% of `ids`."""
    boundary = int(len(ids) * TRAIN_FRACTION)
    return ids[:boundary], ids[boundary:]


# --- the data of a run ----------------------------------------------------------------


@dataclass
class Dataset:
    """A tokenized corpus split for training and validation."""

    source: str  # what --data said
    tokenizer: Tokenizer
    tokenizer_document: dict | None  # {"name", "state"}; None for a tokenizer handed in ready
    train_ids: np.ndarray | ShardedTokens  # (N_train,) token ids; on disk for a token folder
    val_ids: np.ndarray | ShardedTokens  # (N_val,) token ids
    tokenizer_spec: str | None = None  # the --tokenizer a token folder was prepared with

    def split(self, name: str) -> np.ndarray:
        return {"train": self.train_ids, "val": self.val_ids}[name]


def check_split_lengths(dataset: Dataset, block_size: int) -> None:
    """Each split needs at least one window of block_size inputs and their targets."""
    for name in ("train", "val"):
        have = len(dataset.split(name))
        if have < block_size + 1:
            total = len(dataset.train_ids) + len(dataset.val_ids)
            raise GenError(
                f"the {name} split of {dataset.source!r} has {have} tokens, fewer than block_size + 1 = "
                f"{block_size + 1} (the corpus has {total} tokens, split 90/10); "
                f"use a longer corpus or a smaller --block-size"
            )


def load_dataset(
    data: str,
    tokenizer_spec: str | None = None,
    tokenizer_document: dict | None = None,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    misfit_advice: str | None = None,
    verify: bool = False,
) -> Dataset:
    """Read `data`, tokenize it and split it.

    Training passes `tokenizer_spec` (the tokenizer is then trained on the corpus);
    scoring, resuming and fine-tuning pass the `tokenizer_document` stored in a
    checkpoint, or a ready `tokenizer` (an ONNX file's). Such a tokenizer may not
    encode the text (a character outside a char vocabulary): `misfit_advice` then
    ends the one-line error, saying what to do. A folder of token shards
    (gen.core.shards) is read where it lies, with its own tokenizer, which a caller's
    must equal; `verify` checks its shards' sums.
    """
    if is_token_folder(data):
        return _token_folder_dataset(data, tokenizer_spec, tokenizer_document, tokenizer, progress, verify)
    text = read_text(corpus_path(data, progress=progress))
    if tokenizer is None and tokenizer_document is not None:
        tokenizer = tokenizer_from_dict(tokenizer_document)
    elif tokenizer is None:
        tokenizer, tokenizer_document = train_tokenizer(text, tokenizer_spec or "char", progress)
    try:
        ids = encode_corpus(text, tokenizer, progress)
    except GenError as error:
        if misfit_advice is None:
            raise
        raise GenError(f"{data!r} does not fit the tokenizer: {error}; {misfit_advice}") from None
    train_ids, val_ids = split_tokens(ids)
    return Dataset(data, tokenizer, tokenizer_document, train_ids, val_ids)


def _token_folder_dataset(data: str, tokenizer_spec: str | None, tokenizer_document: dict | None,
                          tokenizer: Tokenizer | None, progress: bool, verify: bool) -> Dataset:
    """A folder of token shards as a Dataset, its tokenizer checked against the caller's.

    The folder's own tokenizer is used; a caller's (a checkpoint's, an ONNX file's, a
    --tokenizer given) must be the same one. nanoGPT's GPT-2 ids (train.bin without
    meta.pkl) carry no tokenizer: they need one built from a file, GPT-2's own.
    """
    folder = open_token_folder(data, verify=verify, progress=progress)
    recorded = folder.tokenizer_document
    if recorded is None:  # nanoGPT's GPT-2 ids carry no tokenizer
        spec = tokenizer_spec
        if tokenizer is None and tokenizer_document is None:
            tokenizer, tokenizer_document = _tokenizer_for_gpt2_ids(data, tokenizer_spec)
    else:
        spec = folder.tokenizer_spec
        _check_folder_tokenizer(data, recorded, spec, tokenizer_spec, tokenizer_document, tokenizer)
        if tokenizer is None and tokenizer_document is None:
            tokenizer_document = recorded
    if tokenizer is None:
        tokenizer = tokenizer_from_dict(tokenizer_document)
    check_tokens(folder, tokenizer)
    train_ids, val_ids = folder.splits()
    return Dataset(data, tokenizer, tokenizer_document, train_ids, val_ids, tokenizer_spec=spec)


def _check_folder_tokenizer(data: str, recorded: dict, spec: str, tokenizer_spec: str | None,
                            tokenizer_document: dict | None, tokenizer: Tokenizer | None) -> None:
    """Refuse a --tokenizer other than the one the folder was prepared with, and a checkpoint's
    or an ONNX file's tokenizer other than the folder's."""
    where = f"the token folder {data!r}"
    if tokenizer_spec is not None and parse_spec(tokenizer_spec, "tokenizer") != parse_spec(spec, "tokenizer"):
        raise GenError(f"{where} was prepared with --tokenizer {spec}, not {tokenizer_spec}; "
                       f"leave --tokenizer out (the folder's own is used), or prepare it again")
    # (a tokenizer object does not know its registered name: it is compared by its state)
    callers = tokenizer_document if tokenizer is None else {"name": recorded["name"], "state": tokenizer.to_dict()}
    if callers is not None and not same_tokenizer(callers, recorded):
        raise GenError(f"{where} was prepared with another tokenizer than this model's ({recorded['name']} "
                       f"of its own vocabulary); give the folder prepared for this model, or prepare "
                       f"the corpus again with its tokenizer")


def _tokenizer_for_gpt2_ids(data: str, tokenizer_spec: str | None) -> tuple[Tokenizer, dict]:
    """The tokenizer for nanoGPT's train.bin without meta.pkl (GPT-2's tiktoken ids): one read
    from a file (GPT-2's tokenizer.json), never one learned from text the folder does not hold."""
    from gen.core.registry import get_registry

    advice = (f"{data!r} holds nanoGPT's train.bin without meta.pkl, that is GPT-2's token ids (tiktoken); "
              f"give GPT-2's tokenizer with --tokenizer hf:path=tokenizer.json")
    if tokenizer_spec is None:
        raise GenError(advice)
    name, _ = parse_spec(tokenizer_spec, "tokenizer")
    if getattr(get_registry().entry("tokenizer", name).load(), "learns_from_text", True) is not False:
        raise GenError(f"{advice}, not {tokenizer_spec} (which would learn a vocabulary of its own)")
    return train_tokenizer("", tokenizer_spec)
