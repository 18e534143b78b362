"""Sampler helpers and the `--sampler NAME:KEY=VALUE,...` machinery (numpy, no torch).

A sampler turns the logits of the last position into next-token ids:

    sampler(logits: float32 (batch, vocab), rng: np.random.Generator) -> int64 (batch,)

A *filter* is a sampler that only reshapes the distribution (temperature, top-k,
top-p): it subclasses `LogitsFilter` and implements `filter(logits) -> logits`.
Filters chain before one final draw, so `top_k:k=40` then `temperature:t=0.8`
applies both and then draws from the result.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from gen.core.errors import GenError
from gen.core.specs import call_with_options, convert_options, describe_options, parse_spec


class Sampler(Protocol):
    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


# --- helpers for sampler authors -------------------------------------------------


def check_logits(logits: np.ndarray) -> np.ndarray:
    """Return logits as a float32 (batch, vocab) array; reject NaN with a clear error."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise GenError(f"a sampler takes logits of shape (batch, vocab), got shape {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any():  # -inf is a masked token, fine
        raise GenError(
            "the model produced NaN or infinite logits; the checkpoint or export is broken "
            "(retrain or re-export)"
        )
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, computed stably (masked -inf entries get 0)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def mask_logits(logits: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """A copy of `logits` with the entries where `remove` is True set to -inf."""
    return np.where(remove, np.float32(-np.inf), logits).astype(np.float32)


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One id per row drawn from the probabilities `probs` (batch, vocab) with `rng`.

    One uniform number per row and a search in the cumulative sum: exact,
    reproducible for a seed, and the same on every backend.
    """
    probs = np.asarray(probs, dtype=np.float64)
    cumulative = np.cumsum(probs, axis=-1)
    uniforms = rng.random(probs.shape[0]) * cumulative[:, -1]
    ids = (cumulative <= uniforms[:, None]).sum(axis=-1)  # first index whose sum passes u
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


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


class LogitsFilter:
    """Base class of samplers that reshape the distribution, then draw from it.

    Subclasses implement `filter`; used alone, a filter draws with multinomial
    sampling, and in a chain it hands its logits on to the next sampler.
    """

    def filter(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return draw(softmax(self.filter(check_logits(logits))), rng)


class SamplerChain:
    """Filters applied in order, then one final sampler (multinomial unless given)."""

    def __init__(self, filters: Sequence[LogitsFilter], final: Sampler):
        self.filters = list(filters)
        self.final = final

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits = check_logits(logits)
        for logits_filter in self.filters:
            logits = logits_filter.filter(logits)
        return self.final(logits, rng)


# --- `--sampler` specs ------------------------------------------------------------


def build_sampler(spec: str):
    """One sampler object from a spec string like 'top_k:k=40' (see gen.core.specs)."""
    from gen.core.plugins import get_registry

    name, raw_options = parse_spec(spec, "sampler")
    entry = get_registry().entry("sampler", name)
    options = entry.options()
    what = f"sampler {name!r}"
    kwargs = convert_options(raw_options, options, what)
    return call_with_options(entry.load(), kwargs, f"sampler {spec!r}", describe_options(options))


def build_sampler_chain(specs: Sequence[str]) -> Sampler:
    """The sampler for repeated --sampler options: filters in order, then the final draw.

    No spec means multinomial sampling from the model's distribution. A chain
    ending in a filter draws with multinomial; a sampler that is not a filter
    (greedy, multinomial, a plugin's) may only stand last.
    """
    samplers = [build_sampler(spec) for spec in specs] or [build_sampler("multinomial")]
    *leading, last = samplers
    for spec, sampler in zip(specs, leading):
        if not isinstance(sampler, LogitsFilter):
            raise GenError(
                f"sampler {spec!r} draws tokens itself, so it must come last in the --sampler chain"
            )
    if not leading:
        return last
    if isinstance(last, LogitsFilter):
        return SamplerChain(leading + [last], build_sampler("multinomial"))
    return SamplerChain(leading, last)
