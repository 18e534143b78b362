"""The example constraint plugin, registered in-process: `pytest examples/gen-word-choice`."""
import numpy as np
import pytest

import gen_word_choice
from gen.core.constraints import Constraint
from gen.core.errors import GenError
from gen.core.generation import BackendBase, generate_text
from gen.core.sampling import build_sampler_chain
from gen.core.registry import get_plugins, reset_plugins
from gen.plugins.tokenizers import CharTokenizer


@pytest.fixture
def registered():
    reset_plugins()
    get_plugins().register(gen_word_choice, "gen-word-choice")
    yield
    reset_plugins()


def test_each_step_allows_only_tokens_that_still_begin_a_word(registered):
    tokenizer = CharTokenizer("abemnosy")
    state = Constraint("word_choice", "yes,no,maybe").compile(tokenizer, tokenizer.vocab_size).start()
    assert sorted(tokenizer.decode([t]) for t in state.allowed.nonzero()[0]) == ["m", "n", "y"]
    for character in "ye":
        state.advance(tokenizer.encode(character)[0])
        assert not state.complete
    assert [tokenizer.decode([t]) for t in state.allowed.nonzero()[0]] == ["s"]
    state.advance(tokenizer.encode("s")[0])
    assert state.complete and not state.can_continue()


class ArbitraryModel(BackendBase):
    """A model of gen's generation loop whose logits are a fixed function of the ids (no cache)."""

    block_size, vocab_size, uses_cache = 8, 8, False

    def forward(self, input_ids, attention_mask, past):
        rng = np.random.default_rng(int(input_ids.sum()))
        return rng.normal(size=(*input_ids.shape, self.vocab_size)).astype(np.float32), None

    def empty_past(self, batch_size):
        return None


def test_it_generates_one_of_its_words_and_ends(registered):
    tokenizer = CharTokenizer("abemnosy")
    constraint = Constraint("word_choice", "yes,no,maybe").compile(tokenizer, tokenizer.vocab_size)
    texts = []
    for seed in range(8):
        steps = generate_text(ArbitraryModel(), tokenizer, ["a"], build_sampler_chain([]),
                              np.random.default_rng(seed), 20, constraint=constraint)
        texts.append("".join(piece for step in steps for piece in step.pieces))
    assert set(texts) <= {"yes", "no", "maybe"} and len(set(texts)) > 1


def test_an_empty_list_is_one_line(registered):
    with pytest.raises(GenError, match="comma-separated list of words"):
        Constraint("word_choice", " , ").compile(CharTokenizer("ab"), 2)
