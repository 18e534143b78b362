"""Writing files and directories atomically (no torch).

Everything gen writes that a later run reads (checkpoints, exports, downloaded
corpora, cached tokenizers and tokens) goes through these two helpers: the new
content is written under a temporary name beside its destination and renamed into
place only once it is complete, so an error or a crash never leaves half a file,
and never loses the file that was there before. A write that fails (a full disk, a
read-only folder) is one GenError naming the path; the temporary is removed.

Temporary names carry the writer's process id (`.NAME.new-PID-XXXX`), so that the
next write to the same place can remove what a killed process left behind without
touching a write still in progress in another process.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from gen.core.errors import GenError, first_line


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of writes to `path` whose process is gone (killed mid-write)."""
    for candidate in path.parent.glob(f".{path.name}.new-*"):
        pid_text = candidate.name[len(f".{path.name}.new-"):].split("-", 1)[0]
        if pid_text.isdigit() and not _process_is_alive(int(pid_text)):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)


def check_utf8_path(path: str | os.PathLike, what: str) -> None:
    """A GenError for a path that is not valid UTF-8 text: the checkpoint and export
    readers (safetensors, onnxruntime) cannot open such a path, so gen never writes one."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise GenError(f"the {what} path {os.fspath(path)!r} is not valid UTF-8, which safetensors and "
                       f"onnxruntime cannot open; rename it, or choose a name in UTF-8") from None


def check_writable_destination(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path, or a GenError if it cannot be written: empty, a dangling symbolic
    link or a link loop, or a folder that is a file."""
    if os.fspath(path) == "":
        raise GenError(f"the {what} path is empty; give a file or folder name")
    check_utf8_path(path, what)
    path = Path(path)
    for place in (path, *path.parents):
        if os.path.lexists(place) and not os.path.exists(place):
            raise GenError(f"the {what} path {str(path)!r} goes through {str(place)!r}, a symbolic link "
                           f"that leads nowhere (dangling, or a loop); remove it or choose another path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise GenError(f"the {what} path {str(path)!r} needs {str(parent)!r} to be a folder, but it is a file")
    return path


def check_replaceable_folder(path: str | os.PathLike, written_by_gen: tuple[str, ...], what: str) -> None:
    """Refuse to replace the folder `path` unless all it holds is what gen writes there
    (`written_by_gen`, names of files or folders): `--overwrite` replaces gen's own
    output, never a training run or anyone's other files that happen to be there."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise GenError(f"{what} {str(path)!r} is a file; give a folder")
    foreign = sorted(name for name in os.listdir(path) if name not in written_by_gen)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise GenError(f"{what} {str(path)!r} holds {shown}, which gen did not write there; --overwrite replaces "
                       f"only gen's own output: choose another folder, or move those out first")


def _write_error(path: Path, error: Exception) -> GenError:
    """A failed write as one line: what happened, and that nothing was changed."""
    if isinstance(error, OSError):
        reason = os.strerror(error.errno) if error.errno else str(error)
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += " (the folder is read-only or not yours)"
    else:  # safetensors' own error type, which wraps the OS error in its text
        full_disk = any(marker in str(error) for marker in ("os error 28", "code: 28"))
        reason = os.strerror(errno.ENOSPC) if full_disk else first_line(error)
    return GenError(f"cannot write {str(path)!r}: {reason}; nothing was changed there")


def _is_write_error(error: Exception) -> bool:
    return isinstance(error, OSError) or type(error).__name__ == "SafetensorError"


def _umask() -> int:
    """This process's umask (read without changing it where Linux tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask


def _mode_for(path: Path, created_mode: int) -> int:
    """The permissions of what replaces `path`: those of the file it replaces, or for a new
    one what the user's umask gives (the temporaries start private, 0600 and 0700)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return created_mode & ~_umask()


@contextlib.contextmanager
def replace_file_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path`.

    On an exception the temporary file is removed and `path` stays as it was.
    """
    path = check_writable_destination(path, "output")
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.new-{os.getpid()}-", suffix=".tmp", dir=path.parent)
        os.close(handle)
        temporary = Path(name)
        os.chmod(temporary, _mode_for(path, 0o666))
        yield temporary
        _fsync(temporary)  # on disk before the rename makes it visible
        os.replace(temporary, path)
    except Exception as error:
        if _is_write_error(error):
            raise _write_error(path, error) from None
        raise
    finally:
        if temporary is not None and temporary.exists():
            temporary.unlink()


def recover_interrupted_replace(path: str | os.PathLike) -> None:
    """Put back the old directory if a crash came between the two renames below, and
    remove old ones a crash left after the new directory was already in place."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    try:
        aside = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if aside and not os.path.lexists(path):
            os.rename(aside.pop(), path)
    except FileNotFoundError:  # another process of a distributed run put it back first
        if not os.path.lexists(path):
            raise
        return  # and that process removes the leftovers
    for leftover in aside:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def replace_directory_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path` to fill; on success it replaces `path`.

    A directory cannot be renamed over another, so the old one is moved aside first
    and removed last; `recover_interrupted_replace` puts it back if a crash comes
    between the two renames.
    """
    path = check_writable_destination(path, "output")
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted_replace(path)
        remove_stale_temporaries(path)
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-{os.getpid()}-", dir=path.parent))
        os.chmod(temporary, _mode_for(path, 0o777))
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
    except Exception as error:
        if _is_write_error(error):
            raise _write_error(path, error) from None
        raise
    finally:
        if temporary is not None and temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
