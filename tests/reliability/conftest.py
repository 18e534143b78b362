"""Fixtures of the reliability tests: a tiny trained run and its export, made once."""
import shutil
from pathlib import Path

import pytest
from reliability_helpers import TINY, gen

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare-excerpt.txt"

@pytest.fixture(scope="package")
def workspace(tmp_path_factory):
    """A private user cache, a small corpus, a trained run and its export, made once."""
    root = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        corpus = root / "corpus.txt"
        corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
        result = gen("train", "--data", corpus, "--out", root / "run", *TINY, "--max-iters", 8,
                     "--eval-interval", 4)
        assert result.exit_code == 0, result.output
        result = gen("export", root / "model.onnx", "--checkpoint", root / "run")
        assert result.exit_code == 0, result.output
        yield root


@pytest.fixture
def copy_of(workspace, tmp_path):
    """copy_of(name): a private copy of the workspace's run directory or export."""

    def copy(name: str) -> Path:
        source, target = workspace / name, tmp_path / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
        return target

    return copy
