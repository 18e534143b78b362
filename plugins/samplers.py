"""Built-in samplers (numpy, no torch).

`greedy`, `multinomial` and `mirostat` draw the next token; the others are filters
(`LogitsFilter`) that reshape the distribution and then draw with multinomial
sampling, or hand their logits on to the next sampler in a chain. `temperature`,
`top_k`, `top_p` and `min_p` look at the logits alone; `repetition_penalty`,
`penalties` and `no_repeat_ngram` also at the text so far (their `filter` names a
`context` parameter). Those that treat each row on their own and keep no state declare
`row_wise = True`, so that gen serve samples the rows that use them in one call. The
contract is in gen.core.sampling; the first docstring line of each class is what
`gen plugins` shows.
"""
from __future__ import annotations

import math

import numpy as np

from gen.core import (
    GenError,
    LogitsFilter,
    SamplingContext,
    argmax,
    check_logits,
    draw,
    hookimpl,
    keep_only,
    largest,
    largest_unordered,
    mask_logits,
    remove_ids,
    seen_tokens,
    softmax,
)
from gen.core.sampling import SORT_UP_TO, Multinomial, exponentials, row_maxima


class Greedy:
    """Always pick the most likely token (deterministic)."""

    row_wise = True

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits = check_logits(logits)
        ids = argmax(logits)
        # What it drew from, for per-token probabilities: all the mass on that one token.
        rows = np.arange(len(ids))
        self.drawn_from = np.full_like(logits, -np.inf)
        self.drawn_from[rows, ids] = logits[rows, ids]
        return ids


# The range of a float32 option: beyond it the value becomes 0 or inf in the logits' arithmetic.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)

MIROSTAT_MAX_TAU = 1000.0
MIROSTAT_MAX_ETA = 1000.0
# Below this, logits of a few hundred divided by t leave float32's range, and the draw
# is greedy anyway.
MIN_TEMPERATURE = 1e-4


class Temperature(LogitsFilter):
    """Divide the logits by t: t < 1 sharpens the distribution, t > 1 flattens it."""

    row_wise = True

    def __init__(self, t: float = 1.0):
        if t == 0:
            raise GenError(
                "temperature t=0 would divide by zero; to always pick the most likely token use --sampler greedy"
            )
        if not math.isfinite(t) or t < 0 or t > FLOAT32_MAX:
            raise GenError(f"temperature needs a finite t > 0 within float32's range (up to {FLOAT32_MAX:.3g}), "
                           f"got t={t}")
        if t < MIN_TEMPERATURE:  # logits / t would overflow float32
            raise GenError(f"temperature t={t} is below {MIN_TEMPERATURE:g}, which is greedy in all but name "
                           f"(and overflows); use --sampler greedy")
        self.t = t

    def filter(self, logits: np.ndarray) -> np.ndarray:
        return logits / np.float32(self.t)


class TopK(LogitsFilter):
    """Keep the k most likely tokens (ties go to the lower id, as with greedy)."""

    row_wise = True

    def __init__(self, k: int = 40):
        if k < 1:
            raise GenError(f"top_k needs k >= 1, got k={k}")
        self.k = k

    def filter(self, logits: np.ndarray) -> np.ndarray:
        if self.k >= logits.shape[-1]:
            return logits
        if logits.shape[-1] <= SORT_UP_TO:  # a short row (65 characters): one sort, the rest dropped
            most_likely_first = (-logits).argsort(axis=-1, kind="stable")  # equal logits in id order
            return remove_ids(logits, most_likely_first[:, self.k:])
        # A large vocabulary: a row with fewer than k left is cheap to hand on. Every row keeps all it
        # has left (a constraint or a filter before removed the rest); the count over the whole batch
        # is the fast one, the count per row is made only when it may hold.
        finite = logits != -np.inf
        if np.count_nonzero(finite) <= self.k * len(logits) and np.count_nonzero(finite, axis=-1).max() <= self.k:
            return logits
        # Equal logits go in id order, so the kept set has exactly k tokens and top_k:k=1
        # picks what greedy picks; a partition finds them, no sort of the vocabulary.
        return keep_only(logits, largest_unordered(logits, self.k))


class TopP(LogitsFilter):
    """Nucleus sampling: keep the fewest most likely tokens whose mass reaches p."""

    row_wise = True
    # The most likely tokens sorted first; the set widens (by at least this factor, and to as many
    # as the mass still missing may need) only while their mass falls short of p, so a peaked
    # distribution never sorts its whole vocabulary.
    CANDIDATES = 64
    WIDEN = 8

    def __init__(self, p: float = 0.9):
        if not (0 < p <= 1):  # also rejects NaN
            raise GenError(f"top_p needs 0 < p <= 1, got p={p}")
        self.p = p
        self.negated_p = -np.float32(p)  # -p as numpy compares float32 sums with it

    def filter(self, logits: np.ndarray) -> np.ndarray:
        if self.p >= 1:
            return logits  # the whole distribution; rounding in the sums must not drop a token
        return self._filter_for_draw(np.asarray(logits, dtype=np.float32), None)[0]

    def _filter_for_draw(self, logits: np.ndarray, row_max: np.ndarray | None):
        """`filter` for float32 logits (the chain's are), and for one short row also the filtered
        logits' maxima and the exponentials the chain's draw needs (gen.core.sampling.SamplerChain's
        private channel); `row_max` (batch, 1), the maxima of `logits` where the chain knows them."""
        if self.p >= 1:
            return logits, None
        if len(logits) == 1 and logits.shape[-1] <= SORT_UP_TO:
            return self._one_short_row(logits, row_max)
        probs = softmax(logits)
        vocab = probs.shape[-1]
        if vocab <= SORT_UP_TO:  # short rows (65 characters): one sort and one sum, no widening rounds
            most_likely_first = (-probs).argsort(axis=-1, kind="stable")  # (B, V) equal values in id order
            rows = np.arange(len(probs))[:, None]  # indexing by rows and ids costs less than take_along_axis
            cumulative = np.add.accumulate(probs[rows, most_likely_first], axis=-1)
            # A token goes once the tokens before it reach p; the first never does.
            return remove_ids(logits, most_likely_first[:, 1:], cumulative[:, :-1] >= self.p), None
        candidates = min(self.CANDIDATES, vocab)
        rows = np.arange(len(probs))[:, None]
        while True:
            most_likely_first = largest(probs, candidates)  # (B, candidates), as a stable sort orders them
            sorted_probs = probs[rows, most_likely_first]
            cumulative = np.cumsum(sorted_probs, axis=-1)
            # The tokens past the candidates come after mass cumulative[:, -1]: removed once it reaches p.
            short = cumulative[:, -1] < self.p
            if candidates == vocab or not short.any():
                break
            # The tokens left out come most likely first, so the first j of them hold at least j times
            # their mean: the mass still missing needs at most (missing / mean) more, and the next
            # round is the last (a flat distribution goes to a sort of the whole vocabulary at once).
            mass = cumulative[short, -1].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                needed = ((self.p - mass) * (vocab - candidates) / (1 - mass)).max()
            candidates = vocab if not np.isfinite(needed) else \
                int(min(vocab, max(candidates * self.WIDEN, candidates + needed + 1)))
        # A token is kept while the tokens before it fall short of p; the first always is.
        keep = np.empty(cumulative.shape, dtype=bool)
        keep[:, 0] = True
        np.less(cumulative[:, :-1], self.p, out=keep[:, 1:])
        return keep_only(logits, most_likely_first, keep), None

    def _one_short_row(self, logits: np.ndarray, row_max: np.ndarray | None):
        """One row of a short vocabulary (`gen run` on 65 characters), in as few numpy calls as it
        takes: right after a model step the caches are cold and every call costs microseconds.
        The draw after it needs exp(filtered - max): the kept tokens' weights are those computed
        here and the removed tokens' are 0, so they are handed on rather than computed again, as
        long as the row's maximum is among the kept (the most likely token always is)."""
        if row_max is None:
            row_max = row_maxima(logits)  # (1, 1)
        top = row_max.item()
        weights = exponentials(logits, top)  # (1, V)
        # -softmax(logits), (V,): negated in the division (x / -s is -(x / s) exactly), so that an
        # ascending stable sort puts the most likely first, equal probabilities in id order.
        negated = weights[0] / -np.add.reduce(weights, axis=-1).item()
        most_likely_first = negated.argsort(kind="stable")  # (V,)
        # The mass of each prefix of that order, negated: it only falls, so read backwards it rises.
        negated_mass = np.add.accumulate(negated.take(most_likely_first))[::-1]
        # A token goes once the tokens before it reach p; the first never does. So the row keeps a
        # prefix of its order: the sums below p (above -p, negated), and one token more.
        kept = min(len(negated_mass) - int(negated_mass.searchsorted(self.negated_p, side="right")),
                   len(negated_mass) - 1) + 1
        removed = most_likely_first[kept:]
        filtered = logits.copy()  # the logits handed in are not ours to change
        filtered.put(removed, -np.inf)  # one row: its flat indices are the ids (cheaper than [0, removed])
        # Rounding can make a token just below the maximum exactly as probable and first in the order;
        # only when the maximum itself stays are the weights softmax's for the filtered row.
        if not (math.isfinite(top) and logits.item(most_likely_first.item(0)) == top):
            return filtered, None
        weights.put(removed, 0)  # exp(-inf - max)
        return filtered, (row_max, weights)


class MinP(LogitsFilter):
    """Keep the tokens at least p times as likely as the most likely one."""

    row_wise = True

    def __init__(self, p: float = 0.05):
        if not (0 <= p <= 1):  # also rejects NaN
            raise GenError(f"min_p needs 0 <= p <= 1, got p={p}")
        self.p = p

    def filter(self, logits: np.ndarray) -> np.ndarray:
        probs = softmax(logits)
        threshold = self.p * probs.max(axis=-1, keepdims=True)
        return mask_logits(logits, probs < threshold)  # the most likely token always passes


class RepetitionPenalty(LogitsFilter):
    """Penalise tokens already in the text (CTRL): positive logits divided, negative multiplied."""

    def __init__(self, penalty: float = 1.1, window: int = 0):
        if not (math.isfinite(penalty) and penalty > 0):
            raise GenError(f"repetition_penalty needs a finite penalty > 0 (1 is none), got penalty={penalty}")
        if not FLOAT32_TINY <= penalty <= FLOAT32_MAX:  # 0 or inf in float32: logits / penalty breaks
            raise GenError(f"repetition_penalty needs a penalty within float32's range ({FLOAT32_TINY:.3g} to "
                           f"{FLOAT32_MAX:.3g}; 1 is none), got penalty={penalty}")
        if window < 0:
            raise GenError(f"repetition_penalty needs window >= 0 (0: the whole text), got window={window}")
        self.penalty = np.float32(penalty)
        self.window = window

    def filter(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        rows = [tokens[-self.window:] if self.window else tokens for tokens in context.tokens]  # prompt and output
        row_of, ids, _ = seen_tokens(rows, logits.shape[-1])  # only the ids in the text are touched
        seen = logits[row_of, ids]
        with np.errstate(over="ignore"):  # an overflow is the chain's to report, naming this sampler
            penalised = np.where(seen > 0, seen / self.penalty, seen * self.penalty)
        result = logits.astype(np.float32)  # a copy: the logits handed in are not ours to change
        result[row_of, ids] = penalised
        return result


class Penalties(LogitsFilter):
    """OpenAI's presence and frequency penalties, over the generated tokens."""

    def __init__(self, presence: float = 0.0, frequency: float = 0.0):
        for name, value in (("presence", presence), ("frequency", frequency)):
            if not math.isfinite(value):
                raise GenError(f"penalties needs a finite {name}, got {name}={value}")
            if abs(value) > FLOAT32_MAX:  # inf in float32, and inf * 0 is NaN for every unseen token
                raise GenError(f"penalties needs {name} within float32's range (-{FLOAT32_MAX:.3g} to "
                               f"{FLOAT32_MAX:.3g}), got {name}={value}")
        self.presence = np.float32(presence)
        self.frequency = np.float32(frequency)

    def filter(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        generated = [context.generated(row) for row in range(len(context.tokens))]
        row_of, ids, counts = seen_tokens(generated, logits.shape[-1])  # only the ids generated are touched
        result = logits.astype(np.float32)  # a copy: the logits handed in are not ours to change
        result[row_of, ids] = logits[row_of, ids] - self.frequency * counts.astype(np.float32) - self.presence
        return result


class NoRepeatNgram(LogitsFilter):
    """Forbid any token that would repeat an n-gram already in the text."""

    def __init__(self, n: int = 3):
        if n < 1:
            raise GenError(f"no_repeat_ngram needs n >= 1, got n={n}")
        self.n = n
        self.followers = None  # per row: (n-1)-gram -> the ids that followed it
        self.indexed = None  # per row: how many ids of its text are indexed

    def filter(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        if self.followers is None:
            self.followers = [{} for _ in context.tokens]
            self.indexed = [0] * len(context.tokens)
        remove = np.zeros(logits.shape, dtype=bool)
        prefix_length = self.n - 1
        for row, tokens in enumerate(context.tokens):
            length = len(tokens)
            # Index the n-grams that end in ids this row gained since the last step; only
            # those ids and the n-1 before them become Python ints, not the whole text.
            start = max(self.indexed[row], self.n)
            offset = max(0, start - self.n)
            tail = tokens[offset:].tolist()
            for end in range(start - offset, length - offset + 1):
                self.followers[row].setdefault(tuple(tail[end - self.n:end - 1]), set()).add(tail[end - 1])
            self.indexed[row] = length + 1
            prefix = tuple(tokens[length - prefix_length:].tolist()) if prefix_length else ()
            banned = self.followers[row].get(prefix) if length >= prefix_length else None
            if banned:
                remove[row, list(banned)] = True
        # Never remove every token: a row with nothing left keeps its distribution.
        remove[remove.all(axis=-1)] = False
        return mask_logits(logits, remove)


class Mirostat:
    """Mirostat 2.0: keep the surprise of the text near tau, adapting a cut-off per row."""

    def __init__(self, tau: float = 5.0, eta: float = 0.1):
        # No float32 probability is more surprising than 149 bits (2**-149 is the smallest), so a
        # larger tau never cuts anything; the bounds keep the cut-off's updates finite.
        if not (math.isfinite(tau) and 0 < tau <= MIROSTAT_MAX_TAU):
            raise GenError(f"mirostat needs a finite tau > 0 and at most {MIROSTAT_MAX_TAU:g} (bits; above 149 it "
                           f"cuts nothing), got tau={tau}")
        if not (math.isfinite(eta) and 0 < eta <= MIROSTAT_MAX_ETA):
            raise GenError(f"mirostat needs a finite eta > 0 and at most {MIROSTAT_MAX_ETA:g}, got eta={eta}")
        self.tau = tau
        self.eta = eta
        self.mu = None  # per row: the largest surprise (bits) a token may have; starts at 2 tau

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits = check_logits(logits)
        if self.mu is None:
            self.mu = np.full(logits.shape[0], 2 * self.tau)
        probs = softmax(logits)
        with np.errstate(divide="ignore"):
            surprise = -np.log2(probs)  # (B, V) bits
        too_surprising = surprise > self.mu[:, None]
        too_surprising[np.arange(len(probs)), probs.argmax(axis=-1)] = False  # keep at least one
        truncated = mask_logits(logits, too_surprising)
        kept = softmax(truncated)
        ids = draw(kept, rng)
        observed = -np.log2(kept[np.arange(len(ids)), ids])
        self.mu = self.mu - self.eta * (observed - self.tau)
        self.drawn_from = truncated  # for per-token probabilities
        return ids


@hookimpl
def register_samplers(register):
    register("greedy", Greedy)
    register("multinomial", Multinomial)
    register("temperature", Temperature)
    register("top_k", TopK)
    register("top_p", TopP)
    register("min_p", MinP)
    register("repetition_penalty", RepetitionPenalty)
    register("penalties", Penalties)
    register("no_repeat_ngram", NoRepeatNgram)
    register("mirostat", Mirostat)
