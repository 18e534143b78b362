"""Writing files and directories atomically (no torch).

Everything gen writes that a later run reads (checkpoints, exports, downloaded
corpora, cached tokenizers and tokens) goes through these two helpers: the new
content is written under a temporary name beside its destination and renamed into
place only once it is complete, so an error or a crash never leaves half a file,
and never loses the file that was there before.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def replace_file_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path`.

    On an exception the temporary file is removed and `path` stays as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _fsync(temporary)  # on disk before the rename makes it visible
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def recover_interrupted_replace(path: str | os.PathLike) -> None:
    """Put back the old directory if a crash came between the two renames below."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return
    try:
        aside = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if aside:
            os.rename(aside[-1], path)
    except FileNotFoundError:  # another process of a distributed run put it back first
        if not path.exists():
            raise


@contextlib.contextmanager
def replace_directory_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path` to fill; on success it replaces `path`.

    A directory cannot be renamed over another, so the old one is moved aside first
    and removed last; `recover_interrupted_replace` puts it back if a crash comes
    between the two renames.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_replace(path)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        yield temporary
        for file in temporary.iterdir():
            _fsync(file)
        if path.exists():
            aside = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, aside)
            os.rename(temporary, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
