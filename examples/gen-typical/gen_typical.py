"""A gen plugin adding `typical`: locally typical sampling (Meister et al., 2022).

Instead of keeping the most likely tokens, typical sampling keeps the tokens whose
surprise (-log p) is closest to the expected surprise (the entropy of the
distribution), smallest gap first, until their mass reaches p.
"""
import numpy as np

from gen.core import GenError, LogitsFilter, hookimpl, mask_beyond_mass


class Typical(LogitsFilter):
    """Locally typical sampling: keep the tokens whose surprise is nearest the entropy."""

    def __init__(self, p: float = 0.9):
        if not (0 < p <= 1):  # also rejects NaN
            raise GenError(f"typical needs 0 < p <= 1, got p={p}")
        self.p = p

    def filter(self, logits: np.ndarray) -> np.ndarray:
        if self.p >= 1:
            return logits  # the whole distribution; rounding in the sums must not drop a token
        # log-softmax in float64; masked (-inf) logits stay -inf with probability 0.
        shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        probs = np.exp(log_probs)
        # 0 * log 0 counts as 0 in the entropy (and must not become 0 * -inf = NaN).
        entropy = -(probs * np.where(probs > 0, log_probs, 0.0)).sum(axis=-1, keepdims=True)
        # Masked tokens get an infinite gap, so they sort last and are never needed.
        surprise_gap = np.abs(-log_probs - entropy)

        most_typical_first = np.argsort(surprise_gap, axis=-1, kind="stable")
        return mask_beyond_mass(logits, probs, most_typical_first, self.p)


@hookimpl
def register_samplers(register):
    register("typical", Typical)
