"""Properties of the built-in samplers and of `--sampler` chain parsing."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gen.core import GenError, RowStreams, argmax, mask_beyond_mass, softmax
from gen.core.sampling import build_sampler, build_sampler_chain
from gen.core.sampling import draw as draw_from_probs

# Fast enough to run on every change; no deadline because the first call of a
# test can be slow on a cold machine.
quick = settings(max_examples=60, deadline=None)

BUILTIN_SAMPLERS = ["greedy", "min_p", "mirostat", "multinomial", "no_repeat_ngram", "penalties",
                    "repetition_penalty", "temperature", "top_k", "top_p"]

# Every built-in alone, at the edges of its options, and chained.
CHAINS = [
    ["greedy"],
    ["multinomial"],
    ["temperature:t=0.7"],
    ["temperature:t=3"],
    ["top_k:k=1"],
    ["top_k:k=5"],
    ["top_p:p=0.5"],
    ["top_p:p=1"],
    ["min_p:p=0"],
    ["min_p:p=0.2"],
    ["min_p:p=1"],
    ["top_k:k=40", "temperature:t=0.8"],
    ["temperature:t=0.5", "top_p:p=0.9", "min_p:p=0.05", "greedy"],
    ["top_k:k=3", "multinomial"],
]


@st.composite
def logits_batches(draw, max_batch=5, max_vocab=30, masked=True):
    """float32 (batch, vocab) logits; some entries already masked to -inf (as an
    earlier filter in a chain leaves them), but never a whole row."""
    batch = draw(st.integers(1, max_batch))
    vocab = draw(st.integers(1, max_vocab))
    logits = draw(arrays(np.float32, (batch, vocab), elements=st.floats(-30, 30, width=32)))
    if masked:
        hide = draw(arrays(np.bool_, (batch, vocab)))
        hide[np.arange(batch), logits.argmax(axis=-1)] = False
        logits = np.where(hide, -np.inf, logits).astype(np.float32)
    return logits


def with_clear_max(logits: np.ndarray) -> np.ndarray:
    """The same logits with each row's maximum raised by 1, so it is the only maximum."""
    logits = logits.copy()
    rows = np.arange(logits.shape[0])
    logits[rows, logits.argmax(axis=-1)] += 1.0
    return logits


# --- every sampler ----------------------------------------------------------------


@quick
@given(logits=logits_batches(), chain=st.sampled_from(CHAINS), seed=st.integers(0, 2**32 - 1))
def test_samplers_return_one_int64_id_per_row_never_a_masked_token(logits, chain, seed):
    ids = build_sampler_chain(chain)(logits, np.random.default_rng(seed))
    assert ids.dtype == np.int64
    assert ids.shape == (logits.shape[0],)
    assert ((ids >= 0) & (ids < logits.shape[1])).all()
    assert np.isfinite(logits[np.arange(len(ids)), ids]).all()


@pytest.mark.parametrize("chain", CHAINS, ids=" ".join)
def test_nan_logits_are_a_gen_error(chain):
    logits = np.zeros((2, 5), dtype=np.float32)
    logits[1, 3] = np.nan
    with pytest.raises(GenError, match="NaN"):
        build_sampler_chain(chain)(logits, np.random.default_rng(0))


# --- greedy and the filters that reduce to it -------------------------------------


@quick
@given(logits=logits_batches(), seed=st.integers(0, 2**32 - 1))
def test_greedy_is_argmax(logits, seed):
    ids = build_sampler_chain(["greedy"])(logits, np.random.default_rng(seed))
    np.testing.assert_array_equal(ids, np.argmax(logits, axis=-1))


@quick
@given(logits=logits_batches(), seed=st.integers(0, 2**32 - 1))
def test_low_temperature_agrees_with_greedy_when_the_max_is_clear(logits, seed):
    logits = with_clear_max(logits)
    ids = build_sampler_chain(["temperature:t=0.01"])(logits, np.random.default_rng(seed))
    np.testing.assert_array_equal(ids, argmax(logits))


@quick
@given(logits=logits_batches(), seed=st.integers(0, 2**32 - 1))
def test_top_k_1_is_greedy_even_with_ties(logits, seed):
    logits = np.round(logits)  # many equal logits
    ids = build_sampler_chain(["top_k:k=1"])(logits, np.random.default_rng(seed))
    np.testing.assert_array_equal(ids, argmax(logits))


# --- what each filter keeps -------------------------------------------------------


@quick
@given(logits=logits_batches(masked=False), k=st.integers(1, 40))
def test_top_k_keeps_exactly_the_k_largest(logits, k):
    kept = np.isfinite(build_sampler(f"top_k:k={k}").filter(logits))
    for row, row_kept in zip(logits, kept):
        assert row_kept.sum() == min(k, len(row))
        if not row_kept.all():
            assert row[row_kept].min() >= row[~row_kept].max()


@quick
@given(logits=logits_batches(), p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_most_likely_set_reaching_p(logits, p):
    probs = softmax(logits)
    kept = np.isfinite(build_sampler(f"top_p:p={p!r}").filter(logits))
    for row_probs, row_kept in zip(probs, kept):
        kept_probs = row_probs[row_kept]
        dropped_probs = row_probs[~row_kept]
        # The most likely tokens ...
        if len(dropped_probs):
            assert kept_probs.min() >= dropped_probs.max()
        # ... whose mass reaches p ...
        assert kept_probs.sum() >= p - 1e-6
        # ... and no more of them: without the least likely kept token it falls short.
        assert kept_probs.sum() - kept_probs.min() < p + 1e-6


@quick
@given(logits=logits_batches(), p=st.floats(0.0, 1.0))
def test_min_p_keeps_the_tokens_at_least_p_times_the_most_likely(logits, p):
    probs = softmax(logits)
    kept = np.isfinite(build_sampler(f"min_p:p={p!r}").filter(logits))
    expected = (probs >= p * probs.max(axis=-1, keepdims=True)) & np.isfinite(logits)
    np.testing.assert_array_equal(kept, expected)


@quick
@given(logits=logits_batches(), t=st.floats(0.05, 20.0))
def test_temperature_divides_the_logits(logits, t):
    np.testing.assert_allclose(build_sampler(f"temperature:t={t!r}").filter(logits), logits / t, rtol=1e-6)


# --- multinomial ------------------------------------------------------------------


@quick
@given(logits=logits_batches(), seed=st.integers(0, 2**32 - 1))
def test_multinomial_is_reproducible_for_a_seed(logits, seed):
    sampler = build_sampler_chain(["multinomial"])
    first = sampler(logits, np.random.default_rng(seed))
    second = sampler(logits, np.random.default_rng(seed))
    np.testing.assert_array_equal(first, second)


def test_multinomial_differs_between_seeds():
    uniform = np.zeros((1000, 50), dtype=np.float32)
    sampler = build_sampler_chain(["multinomial"])
    assert (sampler(uniform, np.random.default_rng(0)) != sampler(uniform, np.random.default_rng(1))).any()


# Upper 0.001 quantiles of the chi-square distribution, by degrees of freedom
# (standard tables; scipy.stats.chi2.ppf(0.999, df)).
CHI_SQUARE_CRITICAL_P001 = {2: 13.816, 7: 24.322, 15: 37.697}


@pytest.mark.parametrize("vocab", [3, 8, 16])
def test_multinomial_frequencies_match_softmax(vocab):
    draws = 20_000
    logits = np.linspace(-2.0, 1.0, vocab, dtype=np.float32)
    probs = softmax(logits[None])[0]
    expected = probs * draws
    assert expected.min() >= 5  # the chi-square approximation holds

    ids = build_sampler_chain(["multinomial"])(np.tile(logits, (draws, 1)), np.random.default_rng(2024))
    observed = np.bincount(ids, minlength=vocab)

    def chi_square(expected_counts):
        return ((observed - expected_counts) ** 2 / expected_counts).sum()

    critical = CHI_SQUARE_CRITICAL_P001[vocab - 1]
    assert chi_square(expected) < critical
    # The check has power: the same draws are far from a uniform distribution.
    assert chi_square(np.full(vocab, draws / vocab)) > critical


# --- chains -----------------------------------------------------------------------


@quick
@given(logits=logits_batches(), seed=st.integers(0, 2**32 - 1))
def test_a_chain_of_filters_applies_each_then_draws_with_multinomial(logits, seed):
    chained = build_sampler_chain(["top_k:k=3", "temperature:t=0.8"])(logits, np.random.default_rng(seed))
    filtered = build_sampler("top_k:k=3").filter(logits) / np.float32(0.8)
    by_hand = draw_from_probs(softmax(filtered), np.random.default_rng(seed))
    np.testing.assert_array_equal(chained, by_hand)


@quick
@given(logits=logits_batches())
def test_a_chain_may_end_in_greedy(logits):
    # A clear maximum: temperature's division may round two near logits together (1e-45 / 2 is 0).
    logits = with_clear_max(logits)
    ids = build_sampler_chain(["top_k:k=3", "temperature:t=2", "greedy"])(logits, np.random.default_rng(0))
    np.testing.assert_array_equal(ids, argmax(logits))


def one_row_cases(rng: np.random.Generator, vocab: int = 65) -> dict[str, np.ndarray]:
    """(1, vocab) logits of the shapes that test top-p's one-row path: peaked, flat, with -inf
    entries, with equal logits, and with a token a float32 step below the maximum, as probable
    and of a lower id (the first of top-p's order is then not the maximum)."""
    normal = rng.normal(size=(1, vocab)).astype(np.float32)
    masked = np.where(rng.random((1, vocab)) < 0.5, np.float32(-np.inf), normal)
    masked[0, normal.argmax()] = normal.max()
    first_not_max = normal - np.float32(3)
    first_not_max[0, :2] = [np.nextafter(np.float32(1e-3), np.float32(0)), np.float32(1e-3)]
    return {"peaked": normal * 8, "flat": normal * np.float32(0.01), "masked": masked,
            "equal": rng.integers(-2, 2, size=(1, vocab)).astype(np.float32), "first not max": first_not_max}


def test_top_p_on_one_row_draws_what_its_definition_draws():
    # The one-row path (gen run) computes its nucleus and hands its exponentials to the draw; the
    # same seed must give the same ids and filtered logits as the definition computed the slow way:
    # softmax, a stable sort, the mass before each token, then a draw from the filtered softmax.
    def by_definition(logits, p, rng):
        probs = softmax(logits)
        filtered = mask_beyond_mass(logits, probs, np.argsort(-probs, axis=-1, kind="stable"), p)
        cumulative = np.cumsum(softmax(filtered), axis=-1)
        count = np.count_nonzero(cumulative[0] <= rng.random(1)[0] * cumulative[0, -1])
        return filtered, min(count, logits.shape[-1] - 1)

    rng = np.random.default_rng(0)
    for name, logits in one_row_cases(rng).items():
        for p in (0.1, 0.5, 0.9, 0.99):
            for before, scale in (([], np.float32(1)), (["temperature:t=0.8"], np.float32(0.8))):
                chain = build_sampler_chain([*before, f"top_p:p={p}"])
                seed = int(rng.integers(2**31))
                chain_rng, reference_rng = np.random.default_rng(seed), np.random.default_rng(seed)
                for _ in range(5):
                    ids = chain(logits, chain_rng)
                    filtered, expected = by_definition(logits / scale, p, reference_rng)
                    assert ids.tolist() == [expected], (name, p, before)
                    np.testing.assert_array_equal(chain.filtered, filtered)
    # Both ways out of the one-row path are taken above: with the exponentials, and without them
    # where the maximum is not the first of the order.
    cases = one_row_cases(np.random.default_rng(0))
    assert build_sampler("top_p:p=0.5")._filter_for_draw(cases["peaked"], None)[1] is not None
    assert build_sampler("top_p:p=0.5")._filter_for_draw(cases["first not max"], None)[1] is None


ROW_WISE_CHAINS = [["multinomial"], ["temperature:t=0.7"], ["top_k:k=5"], ["top_p:p=0.5"], ["top_p:p=0.95"],
                   ["min_p:p=0.2"], ["top_k:k=40", "temperature:t=0.8"]]


@quick
@given(logits=logits_batches(max_batch=4, max_vocab=70), chain=st.sampled_from(ROW_WISE_CHAINS),
       seed=st.integers(0, 2**31))
def test_a_row_alone_draws_and_keeps_what_it_does_among_other_rows(logits, chain, seed):
    # gen run samples one row, gen serve stacks rows with their own streams: the one-row shortcuts
    # (draw's, top_p's prefix) must give what the rows' path gives, equal logits included.
    logits = np.round(logits)
    streams = [np.random.default_rng(seed + row) for row in range(len(logits))]
    together = build_sampler_chain(chain)
    ids = together(logits, RowStreams(streams))
    for row in range(len(logits)):
        alone = build_sampler_chain(chain)
        assert alone(logits[row:row + 1], np.random.default_rng(seed + row)).tolist() == [ids[row]]
        np.testing.assert_array_equal(alone.filtered[0], together.filtered[row])


def test_no_sampler_means_multinomial():
    logits = np.linspace(-1, 1, 10, dtype=np.float32)[None].repeat(100, axis=0)
    default = build_sampler_chain([])(logits, np.random.default_rng(5))
    multinomial = build_sampler_chain(["multinomial"])(logits, np.random.default_rng(5))
    np.testing.assert_array_equal(default, multinomial)


@pytest.mark.parametrize(
    "chain, message",
    [
        (["nucleus:p=0.9"], "unknown sampler 'nucleus'; known samplers: " + ", ".join(BUILTIN_SAMPLERS)),
        (["top_k:n=3"], "unknown option 'n' for sampler 'top_k'; accepted options: k (int=40)"),
        (["top_k:k=abc"], "sampler 'top_k' option k='abc' is not a valid int"),
        (["top_p:p=high"], "is not a valid float"),
        (["top_k:"], "malformed sampler spec 'top_k:'"),
        (["top_k:k"], "malformed sampler spec 'top_k:k'"),
        (["top_k:k=1,k=2"], "given twice"),
        (["top_k:k=0"], "top_k needs k >= 1"),
        (["top_p:p=1.5"], "top_p needs 0 < p <= 1, got p=1.5"),
        (["top_p:p=0"], "top_p needs 0 < p <= 1"),
        (["min_p:p=-0.1"], "min_p needs 0 <= p <= 1"),
        (["temperature:t=0"], "use --sampler greedy"),
        (["temperature:t=-1"], "t > 0"),
        (["temperature:t=inf"], "finite t > 0"),
        (["greedy", "top_k:k=3"], "sampler 'greedy' draws tokens itself, so it must come last"),
        (["top_k:k=3", "multinomial", "greedy"], "sampler 'multinomial' draws tokens itself"),
    ],
)
def test_bad_sampler_specs_are_one_line_errors(chain, message):
    with pytest.raises(GenError) as raised:
        build_sampler_chain(chain)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
