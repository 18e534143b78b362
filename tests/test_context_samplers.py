"""Samplers that see the text so far: repetition_penalty, penalties, no_repeat_ngram,
logit bias and mirostat (property tests against their definitions), the context the
generation loop hands them, fresh samplers for every generation, and samplers that
misbehave (one clear line naming the sampler and who registered it)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gen.core import GenError, LogitsFilter, SamplingContext, hookimpl, log_softmax, softmax
from gen.core.generation import generate_ids
from gen.core.registry import get_plugins
from gen.core.sampling import Sampling, build_sampler, build_sampler_chain
from gen.plugins.tokenizers import CharTokenizer

quick = settings(max_examples=60, deadline=None)
TOKENIZER = CharTokenizer("abcdefgh")


@st.composite
def logits_and_history(draw, max_vocab=8, max_batch=3):
    """(logits (B, V) float32, SamplingContext) with random prompts and generated ids."""
    vocab = draw(st.integers(2, max_vocab))
    batch = draw(st.integers(1, max_batch))
    logits = draw(arrays(np.float32, (batch, vocab), elements=st.floats(-8, 8, width=32)))
    step = draw(st.integers(0, 12))
    rows, prompt_lengths = [], []
    for _ in range(batch):
        prompt = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=10))
        generated = draw(st.lists(st.integers(0, vocab - 1), min_size=step, max_size=step))
        rows.append(np.array(prompt + generated, dtype=np.int64))
        prompt_lengths.append(len(prompt))
    return logits, SamplingContext(rows, prompt_lengths, step, TOKENIZER)


# --- the built-ins against their definitions ---------------------------------------------


@quick
@given(case=logits_and_history(), penalty=st.floats(0.5, 3.0), window=st.integers(0, 6))
def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens(case, penalty, window):
    logits, context = case
    got = build_sampler(f"repetition_penalty:penalty={penalty},window={window}").filter(logits, context)
    for row, tokens in enumerate(context.tokens):
        seen = set((tokens[-window:] if window else tokens).tolist())  # prompt and output alike
        for token, value in enumerate(logits[row]):
            expected = (value / np.float32(penalty) if value > 0 else value * np.float32(penalty)) if token in seen else value
            assert got[row, token] == pytest.approx(expected, rel=1e-6, abs=1e-6)


@quick
@given(case=logits_and_history(), presence=st.floats(-2, 2), frequency=st.floats(-2, 2))
def test_penalties_follow_openais_definition_over_generated_tokens(case, presence, frequency):
    logits, context = case
    got = build_sampler(f"penalties:presence={presence},frequency={frequency}").filter(logits, context)
    for row, tokens in enumerate(context.tokens):
        generated = tokens[context.prompt_lengths[row]:].tolist()  # the prompt does not count
        for token, value in enumerate(logits[row]):
            count = generated.count(token)
            expected = value - frequency * count - presence * (count > 0)
            assert got[row, token] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def ngram_followers(tokens: list[int], n: int) -> set[int]:
    """The textbook rule: tokens that would complete an n-gram already in `tokens`."""
    prefix = tokens[len(tokens) - (n - 1):] if n > 1 else []
    if len(tokens) < n - 1:
        return set()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i:i + n - 1] == prefix}


@quick
@given(case=logits_and_history(), n=st.integers(1, 4), steps=st.integers(1, 6), seed=st.integers(0, 99))
def test_no_repeat_ngram_forbids_exactly_the_tokens_that_repeat_an_ngram(case, n, steps, seed):
    logits, context = case
    sampler = build_sampler(f"no_repeat_ngram:n={n}")
    rows = [tokens.tolist() for tokens in context.tokens]
    rng = np.random.default_rng(seed)
    for step in range(steps):  # one instance over several steps: its index grows as the text does
        current = SamplingContext([np.array(row) for row in rows], context.prompt_lengths, context.step + step, TOKENIZER)
        got = sampler.filter(logits, current)
        for row, tokens in enumerate(rows):
            banned = ngram_followers(tokens, n)
            if len(banned) == logits.shape[1]:
                banned = set()  # everything would be banned: the row keeps its distribution
            assert {int(i) for i in np.flatnonzero(np.isneginf(got[row]))} == banned
            tokens.append(int(rng.integers(logits.shape[1])))


@quick
@given(logits=arrays(np.float32, (2, 6), elements=st.floats(-5, 5, width=32)),
       bias=st.dictionaries(st.integers(0, 5), st.floats(-4, 4) | st.just(-math.inf), min_size=1, max_size=3))
def test_logit_bias_adds_to_the_named_tokens_and_minus_infinity_forbids_them(logits, bias):
    chain = Sampling(["greedy"], bias).new()
    if all(math.isinf(value) for value in bias.values()) and len(bias) == 6:
        return
    ids = chain(logits, np.random.default_rng(0))
    expected = logits.copy()
    for token, value in bias.items():
        expected[:, token] += np.float32(value)
    np.testing.assert_array_equal(chain.filtered, expected)
    forbidden = [token for token, value in bias.items() if value == -math.inf]
    assert not set(ids.tolist()) & set(forbidden)


def test_mirostat_keeps_the_surprise_near_tau_with_state_per_row():
    # A Zipf-like distribution over 200 tokens, much more surprising than tau unless cut.
    vocab = 200
    logits = np.tile(-1.1 * np.log(np.arange(1, vocab + 1, dtype=np.float32)), (2, 1))
    logits[1] = logits[1][::-1].copy()  # row 1: the same shape, other ids, its own state
    sampler = build_sampler("mirostat:tau=3.0,eta=0.1")
    rng = np.random.default_rng(0)
    surprises = []
    for _ in range(2000):
        ids = sampler(logits, rng)
        drawn = log_softmax(sampler.drawn_from)[np.arange(2), ids] / -math.log(2)
        surprises.append(drawn)
    assert sampler.mu.shape == (2,)
    mean = np.mean(surprises[200:], axis=0)  # after the controller settles
    assert np.all(np.abs(mean - 3.0) < 0.3), mean
    untouched = -(log_softmax(logits[:1]) / math.log(2))[0]
    assert (np.exp2(-untouched) * untouched).sum() > 4.5  # without mirostat the entropy is far above tau


@quick
@given(logits=arrays(np.float32, (3, 12), elements=st.floats(-6, 6, width=32)), tau=st.floats(0.5, 4),
       eta=st.floats(0.01, 1), seed=st.integers(0, 999), steps=st.integers(1, 8))
def test_mirostat_draws_only_tokens_within_its_cut_off_and_updates_each_rows_mu(logits, tau, eta, seed, steps):
    sampler = build_sampler(f"mirostat:tau={tau},eta={eta}")
    rng = np.random.default_rng(seed)
    surprise = -log_softmax(logits) / math.log(2)  # (B, V) bits under the model
    for _ in range(steps):
        mu = np.full(3, 2 * tau) if sampler.mu is None else sampler.mu.copy()
        ids = sampler(logits, rng)
        rows = np.arange(3)
        # Each drawn token is within the cut-off, or the most likely token (always kept).
        most_likely = softmax(logits).argmax(axis=-1)  # as mirostat computes it, in float64
        assert np.all((surprise[rows, ids] <= mu + 1e-5) | (ids == most_likely))  # float32 probabilities
        kept = log_softmax(sampler.drawn_from)[rows, ids] / -math.log(2)  # surprise under what it drew from
        np.testing.assert_allclose(sampler.mu, mu - eta * (kept - tau), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, message", [
    ("repetition_penalty:penalty=0", "penalty > 0"),
    ("repetition_penalty:window=-1", "window >= 0"),
    ("penalties:presence=nan", "not a valid float"),
    ("no_repeat_ngram:n=0", "n >= 1"),
    ("mirostat:tau=-1", "tau > 0"),
    ("mirostat:eta=0", "eta > 0"),
])
def test_bad_options_are_one_line_errors(spec, message):
    with pytest.raises(GenError, match=message):
        build_sampler_chain([spec])


# --- the context the loop hands over -------------------------------------------------


class RecordingFilter(LogitsFilter):
    """Records what it is given; removes nothing."""

    instances = []

    def __init__(self):
        self.seen = []
        RecordingFilter.instances.append(self)

    def filter(self, logits, context):
        self.seen.append((context.step, [tokens.copy() for tokens in context.tokens], list(context.prompt_lengths),
                          context.tokens[0].flags.writeable))
        return logits


class FixedBackend:
    """A backend whose next-token logits depend only on the last token: always last + 1."""

    block_size = 4
    vocab_size = 8
    uses_cache = False

    def step(self, input_ids, attention_mask, past):
        logits = np.full((len(input_ids), self.vocab_size), -5.0, dtype=np.float32)
        logits[np.arange(len(input_ids)), (input_ids[:, -1] + 1) % self.vocab_size] = 5.0
        return logits, None


class RecorderPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("recording", RecordingFilter)


def test_the_context_holds_each_rows_whole_history_past_the_window(fresh_plugins):
    get_plugins().register(RecorderPlugin(), "recorder-plugin")
    RecordingFilter.instances.clear()
    chain = build_sampler_chain(["recording", "greedy"])
    assert chain.wants_context
    prompts = [[1, 2, 3, 4, 5, 6], [7]]  # the first is longer than the window of 4
    steps = [ids for ids, _ in generate_ids(FixedBackend(), prompts, chain, np.random.default_rng(0), 6, TOKENIZER)]
    [recorder] = RecordingFilter.instances
    assert [step for step, *_ in recorder.seen] == list(range(6))
    final_step, rows, prompt_lengths, writeable = recorder.seen[-1]
    generated = np.stack(steps)[:-1].T  # what was drawn before the last call
    np.testing.assert_array_equal(rows[0], prompts[0] + generated[0].tolist())
    np.testing.assert_array_equal(rows[1], prompts[1] + generated[1].tolist())
    assert prompt_lengths == [6, 1] and writeable is False


def test_a_chain_without_context_samplers_is_never_handed_a_context():
    chain = build_sampler_chain(["top_k:k=3", "temperature:t=0.8"])
    assert not chain.wants_context


def test_every_generation_gets_fresh_samplers(fresh_plugins):
    get_plugins().register(RecorderPlugin(), "recorder-plugin")
    RecordingFilter.instances.clear()
    sampling = Sampling(["recording"])  # builds the first chain, which checks the options
    assert len(RecordingFilter.instances) == 1
    first, second = sampling.new(), sampling.new()
    assert first.filters[0].sampler is not second.filters[0].sampler
    assert len(RecordingFilter.instances) == 2  # the chain that checked is the first one used, not thrown away


# --- samplers that misbehave ---------------------------------------------------------


class BadSamplers:
    @hookimpl
    def register_samplers(self, register):
        register("raises", Raises)
        register("as_list", AsList)
        register("as_floats", AsFloats)
        register("short_batch", ShortBatch)
        register("out_of_range", OutOfRange)
        register("picks_masked", PicksMasked)
        register("zero_dimensional", ZeroDimensional)
        register("filter_kills_all", KillsAll)


class Raises:
    def __call__(self, logits, rng):
        raise ZeroDivisionError("oops")


class AsList:
    def __call__(self, logits, rng):
        return [0] * len(logits)


class AsFloats:
    def __call__(self, logits, rng):
        return np.full(len(logits), 3.7)


class ShortBatch:
    def __call__(self, logits, rng):
        return np.zeros(len(logits) - 1, dtype=np.int64)


class OutOfRange:
    def __call__(self, logits, rng):
        return np.full(len(logits), logits.shape[1], dtype=np.int64)


class PicksMasked:
    def __call__(self, logits, rng):
        return np.argmin(logits, axis=-1)


class ZeroDimensional:
    def __call__(self, logits, rng):
        return np.int64(0)


class KillsAll(LogitsFilter):
    def filter(self, logits):
        return np.full_like(logits, -np.inf)


@pytest.mark.parametrize("chain, problem", [
    (["raises"], "raised ZeroDivisionError: oops"),
    (["as_list"], "returned list, not an array of 3 token ids"),
    (["as_floats"], "returned float64 values, not integer token ids"),
    (["short_batch"], "returned (2,), not an array of 3 token ids"),
    (["out_of_range"], "returned token id 5, outside the vocabulary (0 to 4)"),
    (["top_k:k=2", "picks_masked"], "picked a token that the filters before it had removed"),
    (["zero_dimensional"], "returned (), not an array of 3 token ids"),
    (["filter_kills_all"], "removed every token of a row"),
])
def test_a_misbehaving_sampler_is_one_line_naming_it_and_its_distribution(fresh_plugins, chain, problem):
    get_plugins().register(BadSamplers(), "gen-bad-samplers")
    logits = np.arange(15, dtype=np.float32).reshape(3, 5)
    with pytest.raises(GenError) as error:
        build_sampler_chain(chain)(logits, np.random.default_rng(0))
    message = str(error.value)
    assert f"sampler {chain[-1]!r} (from gen-bad-samplers) {problem}" in message
    assert "\n" not in message
