"""Sizes checked before anything is allocated (no torch).

A config file or an ONNX file of a kilobyte can describe a model of terabytes, and a
command-line option can ask for a batch that no machine holds. Such input must be
refused with an estimate before the allocation, never end in an out-of-memory crash.
"""
from __future__ import annotations

import os

from gen.core.errors import GenError


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000:
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} PB"


def check_fits(needed: float, what: str, advice: str) -> None:
    """Refuse `needed` bytes for `what` when the machine does not have them available."""
    available = available_memory()
    if available is not None and needed > available:
        raise GenError(f"{what} needs about {format_bytes(needed)} of memory, more than the "
                       f"{format_bytes(available)} available; {advice}")
