"""Every code block of the README, the tutorial and docs/inside.md runs, and prints what the page shows.

The pages run as a reader types them (docs/run_docs.py says how a page marks its blocks),
each in a folder of its own, with two differences that keep them small: Tiny Shakespeare
is a 60,000-character excerpt planted in the cache (so `--data shakespeare` reads it
offline) and `gen train` runs 20 steps of 2 evaluation batches (GEN_TRAIN_* variables,
which a command's own options override). Outputs are compared line format by line
format (numbers masked), so the full-size outputs `make docs` writes stay comparable.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/tutorial.md", "docs/inside.md"]  # pages added here are run the same way
EXCERPT = REPOSITORY / "tests" / "data" / "tinyshakespeare-excerpt.txt"
SMALL = {"GEN_TRAIN_MAX_ITERS": "20", "GEN_TRAIN_EVAL_ITERS": "2", "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 300


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_docs", REPOSITORY / "docs" / "run_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_docs"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run_docs = _load_runner()
BLOCKS = [block for page in PAGES for block in run_docs.parse(REPOSITORY / page)]


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    """Each page's blocks run in order, once, in a folder of the page's own: results by block."""
    results = {}
    for page in PAGES:
        folder = tmp_path_factory.mktemp(Path(page).stem)
        corpora = folder / "cache" / "gen" / "corpora"
        corpora.mkdir(parents=True)
        shutil.copyfile(EXCERPT, corpora / "tinyshakespeare.txt")
        environment = run_docs.environment_for(folder, folder / "cache", SMALL)
        for block in run_docs.parse(REPOSITORY / page):
            if block.skip:
                continue
            result = run_docs.run_block(block, folder, environment, TIMEOUT_S)
            results[block.name] = result
            if result.returncode != 0:  # what follows may need it: later blocks are not run
                break
    return results


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_the_block_runs_and_prints_what_the_page_shows(block, page_runs):
    if block.skip:
        pytest.skip(f"{block.name}: {block.skip}")
    result = page_runs.get(block.name)
    assert result is not None, f"{block.name} did not run: a block before it on its page failed"
    assert result.returncode == 0, f"{block.name} failed (exit {result.returncode}):\n{result.output}"
    problems = run_docs.differences(block, result.output)
    assert not problems, (f"{block.name}: its output block no longer matches what it prints "
                          f"(run `make docs`, or fix the page):\n" + "\n".join(problems)
                          + f"\n--- printed:\n{result.output}")


def test_the_pages_mark_their_blocks_as_the_runner_reads_them(tmp_path):
    """The markers: an output right after its command, one after prose, one not compared,
    a skipped command; and the comparison masks numbers yet catches a changed line."""
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\necho step 10\n```\n\n```text\nstep 1,300\n```\n\nProse.\n\n"
        "<!-- output -->\n```text\nanother\n```\n\n```toml\n[a]\n```\n\n"
        "<!-- skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
        "```python\nprint(1)\n```\n\n<!-- output (not compared: the model's text) -->\n```\ntext\n```\n",
        encoding="utf-8")
    echo, gpu, python = run_docs.parse(page)
    assert [output.text for output in echo.outputs] == ["step 1,300\n", "another\n"]
    assert gpu.skip == "needs a GPU" and gpu.outputs == []
    assert python.outputs[0].not_compared == "the model's text"
    echo.outputs.pop()
    assert run_docs.differences(echo, "step 10\n\nstep 20\n") == []
    assert run_docs.differences(echo, "step 10 of 20\n") == [
        "documented, not printed: 'step #'", "printed, not documented: 'step # of #'"]
    assert run_docs.differences(python, "any text at all\n") == []
