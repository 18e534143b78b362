"""Exact cross-entropy of a model over a token sequence (numpy, no torch).

Shared by `gen eval` on a checkpoint (torch) and on an exported model
(onnxruntime): the sequence is cut into non-overlapping windows of `block_size`
inputs, each predicting its next tokens, so every token but the first is scored
exactly once.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np

from gen.core.errors import GenError
from gen.core.sampling import log_softmax

LogitsFunction = Callable[[np.ndarray], np.ndarray]  # (B, T) int64 ids -> (B, T, vocab) logits


def _windows(ids: np.ndarray, block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(ids) - 1, block_size):
        inputs = ids[start:start + block_size]
        targets = ids[start + 1:start + 1 + block_size]
        yield inputs[:len(targets)], targets


def exact_loss(
    logits_of: LogitsFunction,
    ids: Sequence[int],
    block_size: int,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """Mean negative log-likelihood in nats per token, and the number of tokens scored."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise GenError("need at least 2 tokens to score; use a longer text")
    total_nll = 0.0
    scored = 0
    batch: list[tuple[np.ndarray, np.ndarray]] = []

    def score(batch):
        nonlocal total_nll, scored
        # Windows in one batch share a length; the last, shorter one goes alone.
        log_probs = log_softmax(logits_of(np.stack([inputs for inputs, _ in batch])))  # (B, T, vocab)
        targets = np.stack([t for _, t in batch])  # (B, T)
        total_nll -= np.take_along_axis(log_probs, targets[..., None], axis=-1).sum()
        scored += targets.size
        if progress:
            progress(targets.size)

    for window in _windows(ids, block_size):
        if batch and (len(batch) == batch_size or len(window[0]) != len(batch[0][0])):
            score(batch)
            batch = []
        batch.append(window)
    score(batch)
    return total_nll / scored, scored


def loss_report(loss_nats: float, tokens: int, characters: int) -> dict:
    """The figures `gen eval` prints: nats and bits per token, and bits per character."""
    bits = loss_nats / math.log(2)
    return {
        "loss": loss_nats,
        "bits_per_token": bits,
        "bits_per_character": bits * tokens / characters if characters else float("nan"),
        "tokens": tokens,
        "characters": characters,
    }
