"""Fixtures shared by the test modules: the in-repository corpus, a tokenizer, a small GPT and its
export. (The test server for `gen serve`'s app is in serve_helpers.py: a module named
`conftest` is ambiguous beside tests/reliability/conftest.py.)"""
from pathlib import Path

import pytest

from gen.core.registry import reset_plugins

# The first 59,804 characters of Tiny Shakespeare (public domain): the suite's corpus,
# inside the repository so that a bare clone passes its tests.
SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
SMALL_GPT = dict(block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def fresh_plugins():
    """Plugins loaded anew for this test and forgotten after it, so that a plugin the
    test registers, or a GEN_PLUGINS it sets, does not leak into other tests."""
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """A user cache (XDG_CACHE_HOME) of the test module's own, so that what its tests
    train, encode or download goes nowhere else; a module asks for it with
    `pytestmark = pytest.mark.usefixtures("module_cache")`, which sets it before the
    module's other fixtures run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one torch thread; on a busy two-core machine a second,
    spinning OpenMP thread makes step-by-step generation many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tokenizer(text):
    from gen.plugins.tokenizers import CharTokenizer

    return CharTokenizer.train(text)


@pytest.fixture(scope="session")
def make_gpt():
    """make_gpt(vocab_size, seed=0): a small GPT (SMALL_GPT) with random weights, drawn
    wider than GPT's init so that the next-token distribution is peaked and greedy
    choices are not near-ties."""
    import torch

    from gen.plugins.gpt import GPT

    def make(vocab_size: int, seed: int = 0):
        torch.manual_seed(seed)
        model = GPT.from_config(dict(SMALL_GPT, vocab_size=vocab_size))
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() >= 2:
                    torch.nn.init.normal_(parameter, std=0.3)
        return model.eval()

    return make


@pytest.fixture(scope="module")
def gpt(make_gpt, tokenizer):
    return make_gpt(tokenizer.vocab_size)


@pytest.fixture(scope="session")
def small_gpt_onnx(make_gpt, tokenizer, tmp_path_factory):
    """conftest's small GPT (block_size 16, so generation slides its window often) exported to ONNX."""
    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model

    path = tmp_path_factory.mktemp("served") / "small-gpt.onnx"
    export_model(make_gpt(tokenizer.vocab_size), path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(verify=False, progress=None))  # the export itself is tested in test_export
    return path


@pytest.fixture(scope="module")
def corpus(module_cache, tmp_path_factory) -> Path:
    """The first 40,000 characters of Tiny Shakespeare, in a file; training modules
    share it (and module_cache, which this sets up first)."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare-slice.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path
