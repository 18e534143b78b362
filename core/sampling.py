"""Samplers: the contract, helpers for their authors, and the chain gen builds from recipes (numpy, no torch).

A sampler turns the logits of the last position into next-token ids:

    sampler(logits: float32 (batch, vocab), rng) -> int64 (batch,)

A *filter* only reshapes the distribution (temperature, top-k, top-p): it subclasses
`LogitsFilter` and implements `filter(logits) -> logits`. Filters chain, in the
order given, before one final draw, so `top_k:k=40` then `temperature:t=0.8`
applies both and then draws from the result.

The random stream. `rng` is a `np.random.Generator`, or, when gen samples rows of
different generations in one call, a `RowStreams`: each row's own Generator behind the
one method samplers may call, `rng.random(batch)`, which returns one uniform number per
row (`draw` does exactly this). A sampler that needs randomness calls `rng.random(len(logits))`
once per call, or uses `draw(probs, rng)`.

What it drew from. After a call a final sampler may set `self.drawn_from` to the (batch,
vocab) logits it really drew from, when it reshaped them itself (greedy puts all the mass
on one token, mirostat truncates); per-token log-probabilities (`--logprobs`, the API's
`logprobs`) are read off it. Without it, the chain takes the logits it handed the sampler.

Capabilities. A sampler or filter class that treats each row on its own and keeps no state
between calls says so with a class attribute `row_wise = True` (greedy, multinomial,
temperature, top_k, top_p, min_p and the logit bias do). Then `gen serve` samples the rows
of all the requests that use the same recipe in one call on their stacked logits, each
row drawing from its own stream through a `RowStreams`, which is far cheaper than one call
per row. It must hold: each row's result is what that row alone gets; numpy's reductions
over the last axis do this. A sampler that names `context` is never batched so.

    class Sharpen(LogitsFilter):
        row_wise = True  # each row on its own, no state: gen serve may batch it

        def filter(self, logits):
            return logits * 2

A sampler or filter that names a parameter `context` (`filter(self, logits, context)`,
`__call__(self, logits, rng, context)`) also receives a `SamplingContext`: the text
so far of every row. gen builds fresh sampler objects for every generation from a
`SamplerRecipe` (a spec parsed and checked once), so a sampler may keep per-generation
state in its attributes.
"""
from __future__ import annotations

import inspect
import math
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from gen.core.errors import GenError
from gen.core.specs import (
    BUILTIN_PROVIDER,
    call_with_options,
    convert_options,
    describe_options,
    format_spec,
    parse_spec,
)


class Sampler(Protocol):
    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class SamplingContext:
    """The text so far, for the rows of the batch in order (read-only for samplers).

    tokens: row i is its prompt's ids followed by the ids generated so far, the whole
        history (not only the model's window), as a read-only 1-D int64 array.
    prompt_lengths: how many ids at the start of each row are the prompt.
    step: how many tokens each row has generated so far (0 for the first).
    tokenizer: the model's tokenizer (to decode ids to text).
    """

    tokens: list
    prompt_lengths: list
    step: int
    tokenizer: object

    def generated(self, row: int) -> np.ndarray:
        """The ids generated so far for `row` (its history after the prompt)."""
        return self.tokens[row][self.prompt_lengths[row]:]


def wants_context(method: Callable) -> bool:
    """Whether a sampler's filter or __call__ names a `context` parameter."""
    try:
        return "context" in inspect.signature(method).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


class RowStreams:
    """Each row's own random stream, handed to a sampler as its `rng` when rows of different
    generations are sampled in one call: `random(batch)` draws one number per row, each from
    that row's own `np.random.Generator`, so a row draws what it would draw alone."""

    def __init__(self, rngs: Sequence[np.random.Generator]):
        self.rngs = list(rngs)

    def random(self, size: int) -> np.ndarray:
        if size != len(self.rngs):
            raise GenError(f"a row-wise sampler asked for {size} random numbers for {len(self.rngs)} rows")
        return np.array([rng.random() for rng in self.rngs])


# --- helpers for sampler authors -------------------------------------------------


class SamplerOptionsError(GenError):
    """A sampler's options, not the model, made the logits unusable: the caller's to fix (gen
    serve answers it 400, not 500)."""


def row_maxima(logits: np.ndarray) -> np.ndarray:
    """(batch, 1) each row's largest value, as `logits.max(axis=-1, keepdims=True)` gives it.

    The chain's hot path calls numpy's ufunc methods directly (here np.maximum.reduce, elsewhere
    np.add.reduce and np.add.accumulate for .sum and np.cumsum): the Python wrappers of the array
    methods cost as much as the work itself on a row of 65 characters, and the values are the same."""
    return np.maximum.reduce(logits, axis=-1, keepdims=True)


def finite_maxima(row_max: np.ndarray) -> bool:
    """Whether the rows whose maxima these are, (batch, 1), hold no NaN or +inf (-inf is a removed
    token, fine): a NaN anywhere in a row makes its maximum NaN, a +inf makes it +inf. The chain
    computes the maxima once per step and hands them to `softmax` too."""
    if not row_max.size:
        return True
    # One row (batch 1) is read as it is: a reduction over one number costs more than the test.
    worst = row_max.item() if row_max.size == 1 else row_max.max().item()
    return not (math.isnan(worst) or worst == math.inf)


def finite_logits(logits: np.ndarray) -> bool:
    """Whether no entry of the (batch, vocab) logits is NaN or +inf, in one pass over them (the
    same numpy calls as the chain's own check, so a sampler's check after it finds them warm)."""
    return not logits.size or finite_maxima(row_maxima(logits))


def as_logits(logits: np.ndarray) -> np.ndarray:
    """`logits` as a float32 (batch, vocab) array (no copy when they are one already)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise GenError(f"a sampler takes logits of shape (batch, vocab), got shape {logits.shape}")
    return logits


MODEL_NOT_FINITE = ("the model produced NaN or infinite logits; the checkpoint or export is broken "
                    "(retrain or re-export)")


def check_logits(logits: np.ndarray) -> np.ndarray:
    """Return logits as a float32 (batch, vocab) array; reject NaN with a clear error.

    A SamplerChain checks the model's logits before its first filter and blames a filter whose
    result is not finite (SamplerOptionsError), so this error in a chain is the model's."""
    logits = as_logits(logits)
    if not finite_logits(logits):
        raise GenError(MODEL_NOT_FINITE)
    return logits


def softmax(logits: np.ndarray, row_max: np.ndarray | None = None) -> np.ndarray:
    """Probabilities over the last axis, computed stably (masked -inf entries get 0).

    In float32: exact enough for a draw, and the same numpy code on every backend, so
    a seed gives the same tokens on all of them. `row_max`, (batch, 1), is each row's
    maximum where the caller has it already (the chain's finiteness check computed it).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if row_max is None:
        row_max = row_maxima(logits)
    # One row's maximum as a Python float (float32's value, exactly): it broadcasts for less.
    return normalized(exponentials(logits, row_max.item() if row_max.size == 1 else row_max))


def exponentials(logits: np.ndarray, row_max: np.ndarray | float) -> np.ndarray:
    """A new array of exp(logits - row_max) for float32 logits (batch, vocab), each row shifted by
    its maximum, `row_max` (batch, 1) or, for one row, a float: the weights `softmax` divides by
    their sum (a -inf logit gives 0)."""
    weights = logits - row_max  # a new array, the one the result is made in
    np.exp(weights, out=weights)
    return weights


def normalized(weights: np.ndarray) -> np.ndarray:
    """`weights` (batch, vocab) divided in place by each row's sum: softmax's last step."""
    totals = np.add.reduce(weights, axis=-1, keepdims=True)  # weights.sum(...), see row_maxima
    weights /= totals.item() if totals.size == 1 else totals  # one row's as a float, as in softmax
    return weights


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, computed stably (masked -inf entries stay -inf)."""
    shifted = np.array(logits, dtype=np.float64)  # a copy, shifted in place
    shifted -= shifted.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def token_counts(rows: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """(batch, vocab) counts of each id in each row, e.g. of `context.tokens`."""
    counts = np.zeros((len(rows), vocab_size), dtype=np.int64)
    for i, row in enumerate(rows):
        counts[i] = np.bincount(row, minlength=vocab_size)[:vocab_size]
    return counts


def mask_logits(logits: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """A copy of `logits` with the entries where `remove` is True set to -inf."""
    return np.where(remove, np.float32(-np.inf), logits).astype(np.float32, copy=False)


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One id per row drawn from the probabilities `probs` (batch, vocab) with `rng`.

    One uniform number per row and a search in the cumulative sum: exact,
    reproducible for a seed, and the same on every backend. The entries must be
    probabilities or other weights >= 0 (each row is drawn in proportion to its own),
    never NaN: the one-row search relies on the sums only growing.
    """
    probs = np.asarray(probs, dtype=np.float32)
    batch, vocab = probs.shape
    cumulative = np.add.accumulate(probs, axis=-1)  # np.cumsum's float32 sums, left to right (see row_maxima)
    uniforms = rng.random(batch)  # float64, one per row
    if batch == 1:  # one row (gen run, one request): the same count, in fewer numpy calls
        # Sums of probabilities (>= 0) only grow, so the count is a binary search, compared in float64
        # as the rows below are; searching all sums but the last caps the id at vocab - 1.
        bounds = uniforms * cumulative.item(-1)  # (1,) float64: the last sum as a Python float, exactly
        return cumulative[0, :-1].searchsorted(bounds, side="right").astype(np.int64, copy=False)
    bounds = uniforms[:, None] * cumulative[:, -1:]  # (B, 1) float64
    ids = np.add.reduce(cumulative <= bounds, axis=-1)  # how many sums are <= u: the first index whose sum passes it
    return np.minimum(ids, vocab - 1).astype(np.int64, copy=False)


def draw_from_logits(logits: np.ndarray, rng: np.random.Generator, row_max: np.ndarray | None = None) -> np.ndarray:
    """`draw(softmax(logits), rng)`, the same ids for the same stream, at the cost of the tokens a
    filter left in rather than of the vocabulary: after top_k:k=40 of GPT-2's 50,257 tokens, the
    exponentials, the division and the cumulative sum run over the 40 finite entries of a row.

    Every step is the dense one's, value for value: exp(-inf) is 0 and adding 0 changes no sum, so
    the cumulative sum over the finite entries in id order holds the dense one's values, and each
    row's total is summed over the whole row (zeros included) as softmax sums it, since numpy's
    pairwise summation rounds by position. Logits `check_logits` accepted; NaN is not looked for.
    `row_max`, (batch, 1), is each row's maximum where the caller has it (see `softmax`).
    """
    logits = np.asarray(logits, dtype=np.float32)
    batch, vocab = logits.shape
    if vocab <= SORT_UP_TO:
        return draw(softmax(logits, row_max), rng)
    finite = (logits != -np.inf).ravel()  # 1-D: numpy finds the nonzero entries of a flat array far faster
    if np.count_nonzero(finite) * SPARSE_FRACTION > logits.size:
        return draw(softmax(logits, row_max), rng)
    rows, ids = np.divmod(np.flatnonzero(finite), vocab)  # row by row, each row's ids ascending
    counts = np.bincount(rows, minlength=batch)
    if counts.max() * SPARSE_FRACTION > vocab or counts.min() == 0:
        return draw(softmax(logits, row_max), rng)
    values = logits[rows, ids]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    weights = values - np.maximum.reduceat(values, starts)[rows]
    np.exp(weights, out=weights)
    whole_rows = np.zeros(logits.shape, dtype=np.float32)
    whole_rows[rows, ids] = weights
    probs = weights / whole_rows.sum(axis=-1)[rows]
    uniforms = rng.random(batch)
    drawn = np.empty(batch, dtype=np.int64)
    for row, (start, count) in enumerate(zip(starts.tolist(), counts.tolist())):
        cumulative = np.cumsum(probs[start:start + count])
        bound = uniforms[row] * cumulative[-1]  # float64, compared in float64 as draw compares
        position = int(np.searchsorted(cumulative.astype(np.float64), bound, side="right"))
        drawn[row] = ids[start + position] if position < count else vocab - 1  # draw's count of sums <= u
    return drawn


# draw_from_logits works on the finite entries alone while at most 1/SPARSE_FRACTION of a row is.
SPARSE_FRACTION = 8


def mask_beyond_mass(logits: np.ndarray, probs: np.ndarray, order: np.ndarray, p: float) -> np.ndarray:
    """`logits` with the tokens masked that come after mass `p` is reached in `order`.

    `order` (batch, vocab) lists each row's ids best first (most likely for top-p,
    most typical for typical sampling). A token is removed when the tokens before it
    already reach `p` without it; the first has nothing before it, so every row keeps
    at least one token.
    """
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    cumulative = np.cumsum(sorted_probs, axis=-1)
    mass_before = np.concatenate([np.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], axis=-1)
    remove_sorted = mass_before >= p
    remove = np.empty_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return mask_logits(logits, remove)


def argmax(logits: np.ndarray) -> np.ndarray:
    """The most likely id per row, as int64."""
    return np.asarray(logits).argmax(axis=-1).astype(np.int64)


# Rows up to this long are sorted rather than partitioned: a sort of a few hundred values costs
# less than the partition's extra steps (a character vocabulary is 65 tokens, GPT-2's 50,257).
SORT_UP_TO = 256


def _sorting_is_cheaper(vocab: int, k: int) -> bool:
    """Whether the k largest of a row of `vocab` values are found as cheaply by a whole sort."""
    return vocab <= SORT_UP_TO or 2 * k >= vocab


def largest_unordered(values: np.ndarray, k: int) -> np.ndarray:
    """(batch, k) ids of each row's k largest `values`, not ordered by value: the same set as
    `largest` (equal values at the boundary go to the lower ids), found with a partition of the
    row, never a sort of it. k must be between 1 and the vocabulary size."""
    vocab = values.shape[-1]
    if _sorting_is_cheaper(vocab, k):
        return np.argsort(-values, axis=-1, kind="stable")[:, :k]
    batch = len(values)
    kth = np.partition(values, vocab - k, axis=-1)[:, vocab - k:vocab - k + 1]  # (B, 1) each row's k-th largest
    # Every value above it is kept (fewer than k), then as many of the values equal to it as the row
    # still needs, lowest ids first. Flat arrays: numpy finds nonzero entries of one far faster.
    above = np.flatnonzero((values > kth).ravel())
    ties = np.flatnonzero((values == kth).ravel())  # row by row, ids ascending
    tie_rows = ties // vocab
    rank = np.arange(len(ties)) - np.searchsorted(tie_rows, np.arange(batch))[tie_rows]  # place among its row's ties
    needed = k - np.bincount(above // vocab, minlength=batch)
    kept = np.sort(np.concatenate([above, ties[rank < needed[tie_rows]]]))  # exactly k per row, row by row
    return (kept % vocab).reshape(batch, k)


def largest(values: np.ndarray, k: int) -> np.ndarray:
    """(batch, k) ids of each row's k largest `values`, largest first, equal values in id order:
    exactly `np.argsort(-values, axis=-1, kind="stable")[:, :k]` (greedy's tie rule), at the cost of
    a partition of the row and a sort of k entries instead of a sort of the whole vocabulary.
    -inf entries count as values (they come last)."""
    values = np.asarray(values)
    batch, vocab = values.shape
    k = max(0, min(k, vocab))
    if k == 0:
        return np.empty((batch, 0), dtype=np.int64)
    if _sorting_is_cheaper(vocab, k):
        return np.argsort(-values, axis=-1, kind="stable")[:, :k]
    ids = largest_unordered(values, k)  # in id order here, so the stable sort below keeps equal values so
    order = np.argsort(-values[np.arange(batch)[:, None], ids], axis=-1, kind="stable")
    return np.take_along_axis(ids, order, axis=-1)


def keep_only(logits: np.ndarray, ids: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """float32 logits with every entry -inf but those at `ids` (batch, n), or only those of them
    where `keep` (batch, n) is True: a filter's result built from the few ids it keeps, with no
    pass over the vocabulary but the fill."""
    rows = np.arange(len(logits))[:, None]
    kept = logits[rows, ids]
    if keep is not None:
        kept[~keep] = -np.inf
    result = np.full(logits.shape, -np.inf, dtype=np.float32)
    result[rows, ids] = kept
    return result


def remove_ids(logits: np.ndarray, ids: np.ndarray, remove: np.ndarray | None = None) -> np.ndarray:
    """float32 logits with the entries at `ids` (batch, n) set to -inf, or only those of them where
    `remove` (batch, n) is True: `keep_only`'s complement, for a filter that knows the few ids it
    drops (a short row sorted whole) rather than those it keeps."""
    result = logits.astype(np.float32)  # a copy: the logits handed in are not ours to change
    if remove is None:
        result[np.arange(len(logits))[:, None], ids] = -np.inf
    else:
        result[remove.nonzero()[0], ids[remove]] = -np.inf  # row by row, in the order of ids[remove]
    return result


def seen_tokens(rows: Sequence[np.ndarray], vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ids in each row (e.g. of `context.tokens`) and how often each occurs, sparse: three
    1-D arrays (row index, id, count), one entry per distinct id of a row, ids outside the
    vocabulary left out. What token_counts gives, without a (batch, vocab) array: the cost
    follows the text, not the vocabulary."""
    lengths = [len(row) for row in rows]
    if not sum(lengths):
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    row_of = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    ids = np.concatenate([np.asarray(row, dtype=np.int64) for row in rows])
    inside = (ids >= 0) & (ids < vocab_size)
    flat, counts = np.unique(row_of[inside] * vocab_size + ids[inside], return_counts=True)
    return flat // vocab_size, flat % vocab_size, counts.astype(np.int64)


class LogitsFilter:
    """Base class of samplers that reshape the distribution, then draw from it.

    Subclasses implement `filter(logits)`, or `filter(logits, context)` to see the
    text so far; used alone, a filter draws with multinomial sampling, and in a
    chain it hands its logits on to the next sampler. A subclass that treats each row
    on its own and keeps no state sets `row_wise = True` (see the module docstring).
    """

    row_wise = False

    def filter(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, logits: np.ndarray, rng: np.random.Generator, context: SamplingContext | None = None):
        logits = check_logits(logits)
        filtered = self.filter(logits, context) if wants_context(self.filter) else self.filter(logits)
        return draw_from_logits(filtered, rng)


class LogitBias(LogitsFilter):
    """Add a bias to chosen token ids; a bias of -inf forbids the token (OpenAI's logit_bias)."""

    row_wise = True

    def __init__(self, bias: Mapping[int, float]):
        self.ids = np.array(list(bias), dtype=np.int64)
        self.values = np.array(list(bias.values()), dtype=np.float32)
        if np.isnan(self.values).any() or np.isposinf(self.values).any():
            raise GenError("a logit bias must be a number or -inf (to forbid a token), not NaN or +inf")

    def filter(self, logits: np.ndarray) -> np.ndarray:
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= logits.shape[-1]):
            bad = self.ids[(self.ids < 0) | (self.ids >= logits.shape[-1])][0]
            raise GenError(f"logit bias names token id {bad}, outside the vocabulary (0 to {logits.shape[-1] - 1})")
        biased = logits.copy()
        biased[:, self.ids] += self.values
        return biased


# --- the chain gen builds for every generation ---------------------------------------------


class ChainLink:
    """One sampler of a chain: the object, how it was named, who registered it, and the
    checks that turn a broken plugin's result into one clear GenError."""

    def __init__(self, sampler, provider: str, spec: str | None = None):
        self.sampler = sampler
        self.spec = spec or type(sampler).__name__
        self.provider = provider
        self.is_filter = isinstance(sampler, LogitsFilter)
        self.wants_context = wants_context(sampler.filter if self.is_filter else sampler)
        # Declared by the class; a sampler that reads the text so far sees its own rows only.
        self.row_wise = getattr(sampler, "row_wise", False) is True and not self.wants_context
        # gen's own samplers are tested to return what they must; checking their every
        # result would cost a few passes over the logits per step for nothing.
        self.checked = provider != BUILTIN_PROVIDER
        # gen's own filters that compute the draw's exponentials anyway hand them on (see SamplerChain).
        self.gives_exponentials = not self.checked and hasattr(sampler, "_filter_for_draw")

    def _failed(self, problem: str) -> GenError:
        return GenError(f"sampler {self.spec!r} (from {self.provider}) {problem}")

    def filter(self, logits: np.ndarray, context: SamplingContext | None) -> np.ndarray:
        try:
            result = self.sampler.filter(logits, context) if self.wants_context else self.sampler.filter(logits)
        except GenError:
            raise
        except Exception as error:
            raise self._failed(f"raised {type(error).__name__}: {error}") from None
        if not self.checked:
            return result
        if not isinstance(result, np.ndarray) or result.shape != logits.shape:
            shape = getattr(result, "shape", type(result).__name__)
            raise self._failed(f"returned {shape} from filter(), not logits of shape {logits.shape}")
        result = result.astype(np.float32, copy=False)
        if np.isnan(result).any() or np.isposinf(result).any():
            raise self._failed("returned NaN or +inf logits from filter()")
        if np.isneginf(result).all(axis=-1).any():
            raise self._failed("removed every token of a row; a filter must keep at least one")
        return result

    def draw(self, logits: np.ndarray, rng: np.random.Generator, context: SamplingContext | None) -> np.ndarray:
        try:
            ids = self.sampler(logits, rng, context) if self.wants_context else self.sampler(logits, rng)
        except GenError:
            raise
        except Exception as error:
            raise self._failed(f"raised {type(error).__name__}: {error}") from None
        if not self.checked:
            return ids
        batch, vocab = logits.shape
        if not isinstance(ids, np.ndarray) or ids.shape != (batch,):
            shape = getattr(ids, "shape", type(ids).__name__)
            raise self._failed(f"returned {shape}, not an array of {batch} token ids (shape ({batch},))")
        if not np.issubdtype(ids.dtype, np.integer):
            raise self._failed(f"returned {ids.dtype} values, not integer token ids")
        if ids.min() < 0 or ids.max() >= vocab:
            raise self._failed(f"returned token id {ids.min() if ids.min() < 0 else ids.max()}, "
                               f"outside the vocabulary (0 to {vocab - 1})")
        ids = ids.astype(np.int64, copy=False)
        if np.isneginf(logits[np.arange(batch), ids]).any():
            raise self._failed("picked a token that the filters before it had removed (-inf)")
        return ids


class SamplerChain:
    """Filters applied in order, then one final sampler (multinomial unless given).

    After each call, `filtered` holds the logits the final sampler was given, and
    `drawn_from` those it drew from: the same, unless the final sampler reshapes
    them itself and says so by setting its own `drawn_from` (greedy's one token,
    mirostat's truncation). Per-token probabilities are read off these.

    `row_wise`: every sampler of the chain declares `row_wise = True`, so the chain may
    sample rows of different generations in one call (see the module docstring).

    A private channel between gen's own filters and the draw: a built-in filter that computes
    `exponentials(logits, row_max)` on the way (top_p does, to find its nucleus) may also define
    `_filter_for_draw(logits, row_max) -> (filtered, (filtered_max, weights) or None)`. It is
    handed its input's row maxima where the chain knows them (finite, checked), else None. Where it
    returns weights, it vouches that `filtered_max` is `row_maxima(filtered)`, finite, and `weights`
    is `exponentials(filtered, filtered_max)` value for value: the chain then skips its own check
    of the filtered logits, and when this filter is the last and the chain draws with multinomial,
    the draw divides those weights by their sums instead of computing them again. The same
    probabilities, bit for bit, so the same tokens. It is not a plugin API; plugins' filters are
    called through `filter` as ever.
    """

    def __init__(self, links: Sequence[ChainLink]):
        *filters, final = links
        for link in filters:
            if not link.is_filter:
                raise GenError(f"sampler {link.spec!r} draws tokens itself, so it must come last in the --sampler chain")
        if final.is_filter:  # a chain that ends in a filter draws with multinomial
            filters, final = [*filters, final], ChainLink(Multinomial(), BUILTIN_PROVIDER, "multinomial")
        self.filters = filters
        self.final = final
        self.wants_context = any(link.wants_context for link in links)
        self.row_wise = all(link.row_wise for link in [*filters, final])
        self.filtered = None
        self.drawn_from = None

    def __call__(self, logits: np.ndarray, rng: np.random.Generator, context: SamplingContext | None = None):
        # Every row's maximum, once per step, answers both "is any entry NaN or +inf?" (a NaN or
        # +inf in a row makes its maximum so) and the softmax's shift: one pass, not two.
        logits = as_logits(logits)
        row_max = row_maxima(logits)  # (B, 1)
        if not finite_maxima(row_max):
            raise GenError(MODEL_NOT_FINITE)  # the model's own logits: NaN here is the model's fault
        steps = [logits]
        known_max = row_max  # the maxima of steps[-1], while they are known
        shifted = None  # (the maxima, the exponentials) of the last filter's logits, where it vouches for them
        for link in self.filters:
            if link.gives_exponentials:
                filtered, shifted = link.sampler._filter_for_draw(steps[-1], known_max)
            else:
                filtered, shifted = link.filter(steps[-1], context), None
            known_max = None if shifted is None else shifted[0]
            steps.append(filtered)
        logits = steps[-1]
        if shifted is not None:  # the last filter vouched for its maxima: finite, the shift softmax takes
            row_max = shifted[0]
        elif self.filters:  # what the filters made is checked the same way, and its maxima kept
            row_max = row_maxima(logits)
            if not finite_maxima(row_max):
                raise self._blame(steps)
        self.filtered = logits
        if self.final.sampler.__class__ is Multinomial:  # the logits are checked already: draw at once
            self.drawn_from = logits
            if shifted is not None:  # softmax's own weights, computed by the filter already
                return draw(normalized(shifted[1]), rng)
            # Only a filter leaves -inf entries; the model's own logits are finite throughout.
            return draw_from_logits(logits, rng, row_max) if self.filters else draw(softmax(logits, row_max), rng)
        ids = self.final.draw(logits, rng, context)
        drawn_from = getattr(self.final.sampler, "drawn_from", None)
        self.drawn_from = logits if drawn_from is None else drawn_from
        return ids


    def _blame(self, steps: list[np.ndarray]) -> SamplerOptionsError:
        """The error naming the first filter whose result is NaN or +inf, its input having been finite."""
        for link, result in zip(self.filters, steps[1:]):
            if not finite_logits(result):
                return SamplerOptionsError(
                    f"sampler {link.spec!r} turned the model's finite logits into NaN or infinite ones: an option "
                    f"of it is too extreme for float32 arithmetic; choose a value of smaller magnitude")
        raise AssertionError("a chain blamed for non-finite logits has no filter that made them")


class Multinomial:
    """Draw the next token from the model's distribution as it is."""

    row_wise = True

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return draw_from_logits(check_logits(logits), rng)


# --- recipes: `--sampler` specs parsed and checked once ---------------------------------


@dataclass(frozen=True)
class SamplerRecipe:
    """How to make one sampler: its registered name, its options (typed, checked against the
    plugin's signature) and its registry entry. `spec` is the text shown for it: the spec it
    was parsed from, or the one gen.core.specs.format_spec writes. `build()` makes a fresh
    sampler object each time, with no parsing left to do."""

    name: str
    options: Mapping[str, object]
    entry: object  # the gen.core.registry.PluginEntry that registered it
    spec: str

    @classmethod
    def parse(cls, spec: str) -> "SamplerRecipe":
        """The recipe a `--sampler` spec like 'top_k:k=40' names (see gen.core.specs)."""
        name, options = parse_spec(spec, "sampler")
        return cls._checked(name, options, spec)

    @classmethod
    def of(cls, name: str, **options) -> "SamplerRecipe":
        """The recipe of sampler `name` with typed options, e.g. `SamplerRecipe.of("top_p", p=0.9)`."""
        return cls._checked(name, options, None)

    @classmethod
    def _checked(cls, name: str, options: dict, spec: str | None) -> "SamplerRecipe":
        from gen.core.registry import get_registry

        entry = get_registry().entry("sampler", name)
        typed = convert_options(options, entry.options(), f"sampler {name!r}")
        return cls(name, typed, entry, spec if spec is not None else format_spec(name, typed))

    @property
    def provider(self) -> str:
        return self.entry.provider

    def build(self) -> ChainLink:
        """A fresh sampler object, in the chain link that checks what it returns."""
        sampler = call_with_options(self.entry.load(), dict(self.options), f"sampler {self.spec!r}",
                                    describe_options(self.entry.options()))
        return ChainLink(sampler, self.entry.provider, self.spec)


# The familiar knobs (vLLM's and OpenAI's fields, `gen run --temperature ...`) in the order
# their filters run: the shortcut flags and the server's fields build the same chain here.
SHORTCUT_ORDER = ("repetition_penalty", "presence_penalty", "frequency_penalty", "temperature", "top_k", "top_p",
                  "min_p")


def shortcut_recipes(*, repetition_penalty: float | None = None, presence_penalty: float = 0.0,
                     frequency_penalty: float = 0.0, temperature: float | None = None, top_k: int | None = None,
                     top_p: float | None = None, min_p: float | None = None) -> list[SamplerRecipe]:
    """The sampler chain the familiar knobs name, in vLLM's order (SHORTCUT_ORDER): the penalties
    first (repetition_penalty over the prompt and the text so far, then presence and frequency
    over the text generated), then temperature, top_k, top_p and min_p. A knob left out, or at
    its "off" value (a penalty of 1 or 0, temperature 1, top_k 0 or -1, top_p 1, min_p 0), adds
    nothing; temperature 0 is greedy (top_k, top_p and min_p would all keep the most likely
    token). The values are the caller's to check; the samplers check them again when built."""
    recipes = []
    if repetition_penalty is not None and repetition_penalty != 1:
        recipes.append(SamplerRecipe.of("repetition_penalty", penalty=float(repetition_penalty)))
    if presence_penalty or frequency_penalty:
        recipes.append(SamplerRecipe.of("penalties", presence=presence_penalty, frequency=frequency_penalty))
    if temperature == 0:
        return recipes + [SamplerRecipe.of("greedy")]
    if temperature is not None and temperature != 1:
        recipes.append(SamplerRecipe.of("temperature", t=temperature))
    if top_k is not None and top_k > 0:  # -1 and 0 (vLLM's "off") keep every token
        recipes.append(SamplerRecipe.of("top_k", k=top_k))
    if top_p is not None and top_p != 1:
        recipes.append(SamplerRecipe.of("top_p", p=top_p))
    if min_p is not None and min_p > 0:
        recipes.append(SamplerRecipe.of("min_p", p=min_p))
    return recipes


def build_sampler(spec: str):
    """One sampler object from a spec string like 'top_k:k=40' (see gen.core.specs)."""
    return SamplerRecipe.parse(spec).build().sampler


def build_sampler_chain(specs: Sequence[str], logit_bias: Mapping[int, float] | None = None) -> SamplerChain:
    """A fresh chain for repeated --sampler options (see Sampling)."""
    return Sampling(specs, logit_bias).new()


class Sampling:
    """What to sample with: sampler recipes and a logit bias, from which every generation gets
    a fresh chain (`new()`), so per-generation state never leaks from one prompt, sample or
    request to the next. A sampler object handed in directly is used as it is, state and all.

    `samplers` are recipes or spec strings (parsed here, once). No sampler means multinomial
    sampling from the model's distribution. A chain ending in a filter draws with multinomial;
    a sampler that is not a filter (greedy, multinomial, a plugin's) may only stand last. A
    logit bias applies first.

    The first chain is built here, so that a bad option value (which the plugin's own
    `__init__` checks) fails before any output; the first `new()` hands out that chain.
    """

    def __init__(self, samplers: Sequence[str | SamplerRecipe] = (), logit_bias: Mapping[int, float] | None = None,
                 sampler=None):
        self.recipes = [item if isinstance(item, SamplerRecipe) else SamplerRecipe.parse(item) for item in samplers]
        self.logit_bias = dict(logit_bias or {})
        self.sampler = sampler
        self._lock = threading.Lock()  # one Sampling may serve generations on several threads
        self._unused: SamplerChain | None = self._build()
        # Rows whose Sampling has the same key may share one chain (gen serve); None if they may not.
        self.row_wise_key = (
            (tuple((recipe.name, tuple(recipe.options.items())) for recipe in self.recipes),
             tuple(sorted(self.logit_bias.items())))
            if self.sampler is None and self._unused.row_wise else None
        )

    @property
    def specs(self) -> list[str]:
        """The recipes as spec text, for display."""
        return [recipe.spec for recipe in self.recipes]

    def new(self) -> SamplerChain:
        """A chain of fresh sampler objects."""
        with self._lock:
            chain, self._unused = self._unused, None
        return chain if chain is not None else self._build()

    def _build(self) -> SamplerChain:
        if self.sampler is not None:
            links = [ChainLink(self.sampler, "the caller")]
        else:
            links = [recipe.build() for recipe in self.recipes] or [SamplerRecipe.of("multinomial").build()]
        if self.logit_bias:
            links.insert(0, ChainLink(LogitBias(self.logit_bias), BUILTIN_PROVIDER, "logit_bias"))
        return SamplerChain(links)

    @classmethod
    def of(cls, sampler=None, logit_bias: Mapping[int, float] | None = None) -> "Sampling":
        """From what an API caller passes: a spec, a list of specs, a sampler object, or None."""
        if isinstance(sampler, Sampling):
            if not logit_bias:
                return sampler
            # A logit bias given beside it adds to its own.
            return cls(sampler.recipes, {**sampler.logit_bias, **logit_bias}, sampler.sampler)
        if sampler is None:
            return cls([], logit_bias)
        if isinstance(sampler, (str, SamplerRecipe)):
            return cls([sampler], logit_bias)
        if isinstance(sampler, (list, tuple)):
            return cls(list(sampler), logit_bias)
        if not callable(sampler):
            raise GenError(f"a sampler must be callable or a spec string like 'top_k:k=40', got {sampler!r}")
        return cls(logit_bias=logit_bias, sampler=sampler)
