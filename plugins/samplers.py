"""Built-in samplers (numpy, no torch).

`greedy` and `multinomial` draw the next token; `temperature`, `top_k`, `top_p` and
`min_p` are filters (`LogitsFilter`) that reshape the distribution and then draw with
multinomial sampling, or hand their logits on to the next sampler in a chain.
The contract is in gen.core.sampling; the first docstring line of each class is
what `gen plugins` shows.
"""
from __future__ import annotations

import math

import numpy as np

from gen.core import (
    GenError,
    LogitsFilter,
    argmax,
    check_logits,
    draw,
    hookimpl,
    mask_beyond_mass,
    mask_logits,
    softmax,
)


class Greedy:
    """Always pick the most likely token (deterministic)."""

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return argmax(check_logits(logits))


class Multinomial:
    """Draw the next token from the model's distribution as it is."""

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return draw(softmax(check_logits(logits)), rng)


class Temperature(LogitsFilter):
    """Divide the logits by t: t < 1 sharpens the distribution, t > 1 flattens it."""

    def __init__(self, t: float = 1.0):
        if t == 0:
            raise GenError(
                "temperature t=0 would divide by zero; to always pick the most likely token use --sampler greedy"
            )
        if not math.isfinite(t) or t < 0:
            raise GenError(f"temperature needs a finite t > 0, got t={t}")
        self.t = t

    def filter(self, logits: np.ndarray) -> np.ndarray:
        return logits / np.float32(self.t)


class TopK(LogitsFilter):
    """Keep the k most likely tokens (ties go to the lower id, as with greedy)."""

    def __init__(self, k: int = 40):
        if k < 1:
            raise GenError(f"top_k needs k >= 1, got k={k}")
        self.k = k

    def filter(self, logits: np.ndarray) -> np.ndarray:
        keep = min(self.k, logits.shape[-1])
        # A stable sort of the negated logits puts equal logits in id order, so the
        # kept set has exactly k tokens and top_k:k=1 picks what greedy picks.
        most_likely_first = np.argsort(-logits, axis=-1, kind="stable")
        remove = np.ones(logits.shape, dtype=bool)
        np.put_along_axis(remove, most_likely_first[:, :keep], False, axis=-1)
        return mask_logits(logits, remove)


class TopP(LogitsFilter):
    """Nucleus sampling: keep the fewest most likely tokens whose mass reaches p."""

    def __init__(self, p: float = 0.9):
        if not (0 < p <= 1):  # also rejects NaN
            raise GenError(f"top_p needs 0 < p <= 1, got p={p}")
        self.p = p

    def filter(self, logits: np.ndarray) -> np.ndarray:
        if self.p >= 1:
            return logits  # the whole distribution; rounding in the sums must not drop a token
        probs = softmax(logits)
        most_likely_first = np.argsort(-probs, axis=-1, kind="stable")
        return mask_beyond_mass(logits, probs, most_likely_first, self.p)


class MinP(LogitsFilter):
    """Keep the tokens at least p times as likely as the most likely one."""

    def __init__(self, p: float = 0.05):
        if not (0 <= p <= 1):  # also rejects NaN
            raise GenError(f"min_p needs 0 <= p <= 1, got p={p}")
        self.p = p

    def filter(self, logits: np.ndarray) -> np.ndarray:
        probs = softmax(logits)
        threshold = self.p * probs.max(axis=-1, keepdims=True)
        return mask_logits(logits, probs < threshold)  # the most likely token always passes


@hookimpl
def register_samplers(register):
    register("greedy", Greedy)
    register("multinomial", Multinomial)
    register("temperature", Temperature)
    register("top_k", TopK)
    register("top_p", TopP)
    register("min_p", MinP)
