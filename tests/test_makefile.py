"""The Makefile's targets a user repeats: `make demo` continues (or, with FRESH=1, replaces)
its own run instead of failing on it, and `make clean` keeps .venv (`make distclean` removes
it). Read with `make -n`, which prints the commands without running them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def planned(*arguments) -> list[str]:
    """The commands `make` would run, without running them. (Under `make test` this runs inside
    another make, which would add its directory lines and flags: the test sees make as a user does.)"""
    environment = {name: value for name, value in os.environ.items() if name not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", *arguments], cwd=REPOSITORY, env=environment,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def train_line(lines: list[str]) -> str:
    return next(line for line in lines if " train " in line)


def test_make_demo_starts_continues_or_replaces_its_run(tmp_path):
    out = tmp_path / "out"
    first = planned("demo", f"OUT={out}")
    assert train_line(first).endswith(f"--out {out} ")  # a first run: neither flag
    assert any(line.endswith(f"export {out}.onnx --checkpoint {out} --overwrite") for line in first)
    (out / "latest").mkdir(parents=True)  # what gen train leaves behind
    assert train_line(planned("demo", f"OUT={out}")).endswith("--resume")
    assert train_line(planned("demo", f"OUT={out}", "FRESH=1")).endswith("--overwrite")


def test_make_clean_keeps_the_environment_and_distclean_removes_it():
    clean = " ".join(planned("clean", "OUT=out"))
    assert ".venv-runtime" in clean and " .venv " not in f"{clean} " and "out.onnx" in clean
    assert planned("distclean", "OUT=out")[-1] == "rm -rf .venv"
