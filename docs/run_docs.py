"""Run the code blocks of a markdown page, as a reader would type them.

The contract of a page (README.md, docs/tutorial.md, any page listed in
tests/test_doc_blocks.py):

- A ```bash (or sh, shell) block is commands: it runs as one `bash -e` script in a
  working folder shared by the page's blocks, in order, with the repository's `gen`
  first on PATH. A ```python block runs with the same Python as gen.
- A ```text (or untagged) block right after a command block, with only blank lines
  between, is that block's output; `<!-- output -->` on the line before a text block
  makes it the output of the last command block even with prose between.
- `<!-- output (not compared: REASON) -->` marks an output that depends on the size of
  the run (a model's text): it is regenerated, never compared.
- `<!-- skip: REASON -->` on the line before a command block leaves it (and its output)
  alone: a download, a GPU, torchrun, a server that runs until stopped.
- Every other block (toml, a listing, a transcript) is prose.

An output is compared line format by line format: numbers are masked (`step #: train
loss #`), blank lines dropped and repeated formats kept once, so a run of another size
prints the same formats and a changed line fails. The test runs the pages small
(tests/test_doc_blocks.py: a Tiny Shakespeare excerpt planted in the cache, 20 steps);
`make docs` runs docs/tutorial.md at full size and writes what it printed into its
output blocks (`python docs/run_docs.py --write docs/tutorial.md`).

Only the standard library: the test and `make docs` both import it from here.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGUAGES = {"bash", "sh", "shell"}
OUTPUT_LANGUAGES = {"text", ""}
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(skip|output)\b\s*(.*?)\s*-->\s*$")
NOT_COMPARED = re.compile(r"^\(not compared:\s*(.+)\)$")
# 1,300  5e-3  0.80M  -1.5  2.86e-06  3.38: every number, with its thousands separators
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass
class Block:
    """One fenced block of a page: where it is, what it holds and what it is for."""
    page: Path
    line: int            # the 1-based line of its opening fence
    language: str
    text: str
    start: int           # index of its first body line in the page's lines
    end: int             # index of its closing fence
    skip: str | None = None               # why it is not run
    not_compared: str | None = None       # why an output is regenerated but not compared
    outputs: list["Block"] = field(default_factory=list)  # a command block's output blocks

    @property
    def is_command(self) -> bool:
        return self.language in SHELL_LANGUAGES or self.language == "python"

    @property
    def name(self) -> str:
        return f"{self.page.name}:{self.line}"


def parse(page: Path) -> list[Block]:
    """The page's command blocks, in order, each with its output blocks."""
    lines = page.read_text(encoding="utf-8").splitlines()
    commands: list[Block] = []
    marker: tuple[str, str] | None = None   # the marker on the last non-blank line
    adjacent = False  # only blank lines since the last command block or its output
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            if lines[index].strip():
                found = MARKER.match(lines[index].strip())
                marker = (found.group(1), found.group(2)) if found else None
                adjacent = False
            index += 1
            continue
        closing = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        if closing is None:
            raise ValueError(f"{page}:{index + 1}: a code block that is never closed")
        block = Block(page, index + 1, fence.group(1).lower(), "\n".join(lines[index + 1:closing]) + "\n",
                      index + 1, closing)
        kind, argument = marker or (None, "")
        adjacent_before, adjacent = adjacent, False
        if block.is_command:
            if kind == "skip":
                block.skip = argument.lstrip(":").strip() or "marked skip"
            commands.append(block)
            adjacent = True
        elif block.language in OUTPUT_LANGUAGES and commands and (kind == "output" or adjacent_before):
            reason = NOT_COMPARED.match(argument)
            block.not_compared = reason.group(1) if reason else None
            commands[-1].outputs.append(block)
            adjacent = True
        marker, index = None, closing + 1
    return commands


def line_formats(text: str) -> list[str]:
    """The distinct line formats of an output, in order: numbers masked, blank lines dropped."""
    masked = (NUMBER.sub("#", line.rstrip()) for line in text.splitlines() if line.strip())
    return list(dict.fromkeys(masked))


def differences(block: Block, produced: str) -> list[str]:
    """How the output blocks of a command disagree with what it printed (none: they agree).

    Every documented line format must be printed; when every output block is compared,
    every printed format must also be documented."""
    compared = [output for output in block.outputs if output.not_compared is None]
    if not compared:
        return []
    documented = line_formats("".join(output.text for output in compared))
    printed = line_formats(produced)
    problems = [f"documented, not printed: {line!r}" for line in documented if line not in printed]
    if len(compared) == len(block.outputs):
        problems += [f"printed, not documented: {line!r}" for line in printed if line not in documented]
    return problems


@dataclass
class Result:
    block: Block
    returncode: int
    output: str
    seconds: float


def run_block(block: Block, folder: Path, environment: dict, timeout: float) -> Result:
    """Run one command block in `folder`: stdout and stderr together, as a terminal shows them."""
    if block.language == "python":
        command = [sys.executable, "-c", block.text]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    started = time.perf_counter()
    try:
        finished = subprocess.run(command, cwd=folder, env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout if isinstance(expired.stdout, str) else (expired.stdout or b"").decode()
        return Result(block, -1, output + f"\n(stopped after {timeout:.0f} s)", time.perf_counter() - started)
    return Result(block, finished.returncode, finished.stdout, time.perf_counter() - started)


def environment_for(folder: Path, cache: Path, extra: dict | None = None) -> dict:
    """A reader's shell: the repository's gen first on PATH, HOME and the cache in `folder`."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("GEN_") and key not in ("PYTHONPATH", "COLUMNS")}
    environment.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}",
        "HOME": str(folder / "home"), "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
    })
    environment.update(extra or {})
    (folder / "home").mkdir(exist_ok=True)
    return environment


def regenerate(page: Path, folder: Path, environment: dict, timeout: float, say=print) -> list[Result]:
    """Run every command block of `page` that is not skipped and write what each printed
    into its output blocks. Stops at the first command that fails, writing nothing."""
    results = []
    for block in parse(page):
        if block.skip:
            say(f"{block.name}: skipped ({block.skip})")
            continue
        say(f"{block.name}: {block.text.strip().splitlines()[0][:100]}")
        result = run_block(block, folder, environment, timeout)
        say(f"  {result.seconds:.1f} s")
        if result.returncode != 0:
            raise SystemExit(f"{block.name} failed (exit {result.returncode}):\n{result.output}")
        results.append(result)
    lines = page.read_text(encoding="utf-8").splitlines()
    # from the end, so earlier blocks keep their line numbers
    for result in reversed(results):
        outputs = result.block.outputs
        if not outputs:
            continue
        if len(outputs) > 1:
            raise SystemExit(f"{result.block.name}: give a command one output block to regenerate it")
        output = outputs[0]
        lines[output.start:output.end] = result.output.rstrip("\n").splitlines()
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return results


def user_cached_corpus() -> Path | None:
    """Tiny Shakespeare in the user's gen cache, if it was downloaded there before."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = cache / "gen" / "corpora" / "tinyshakespeare.txt"
    return path if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--write", action="store_true", help="write the outputs into the page")
    parser.add_argument("--corpus", type=Path, default=user_cached_corpus(),
                        help="a copy of Tiny Shakespeare planted in the run's fresh cache (default: the one "
                             "in your gen cache, if any; else the run downloads it)")
    parser.add_argument("--copy", action="append", default=[], metavar="FROM:TO",
                        help="after the run, copy FROM (in the run's folder) to TO (e.g. out/loss.png:docs/loss.png)")
    parser.add_argument("--timeout", type=float, default=3600)
    arguments = parser.parse_args()
    if not arguments.write:
        parser.error("give --write: the page's outputs are rewritten from a fresh run")
    with tempfile.TemporaryDirectory(prefix="gen-docs-") as temporary:
        folder, cache = Path(temporary), Path(temporary) / "cache"
        if arguments.corpus:
            (cache / "gen" / "corpora").mkdir(parents=True)
            shutil.copyfile(arguments.corpus, cache / "gen" / "corpora" / "tinyshakespeare.txt")
        regenerate(arguments.page.resolve(), folder, environment_for(folder, cache), arguments.timeout)
        for pair in arguments.copy:
            source, destination = pair.split(":", 1)
            Path(destination).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / source, destination)
            print(f"copied {source} to {destination}")
    print(f"wrote {arguments.page}")


if __name__ == "__main__":
    main()
