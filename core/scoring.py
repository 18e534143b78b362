"""Exact cross-entropy of a model over a token sequence (numpy, no torch).

Shared by `gen eval` on a checkpoint (torch) and on an exported model
(onnxruntime): the sequence is cut into non-overlapping windows of `block_size`
inputs, each predicting its next tokens, so every token but the first is scored
exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from gen.core.errors import GenError
from gen.core.sampling import largest, log_softmax

LogitsFunction = Callable[[np.ndarray], np.ndarray]  # (B, T) int64 ids -> (B, T, vocab) logits


def _windows(ids: np.ndarray, block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(ids) - 1, block_size):
        inputs = ids[start:start + block_size]
        targets = ids[start + 1:start + 1 + block_size]
        yield inputs[:len(targets)], targets


def _scored_windows(
    logits_of: LogitsFunction, ids: np.ndarray, block_size: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(B, T, vocab) log-probabilities and (B, T) targets of each batch of windows, in order.
    Windows in one batch share a length; the last, shorter one goes alone."""
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    for window in _windows(ids, block_size):
        if batch and (len(batch) == batch_size or len(window[0]) != len(batch[0][0])):
            yield log_softmax(logits_of(np.stack([inputs for inputs, _ in batch]))), np.stack([t for _, t in batch])
            batch = []
        batch.append(window)
    yield log_softmax(logits_of(np.stack([inputs for inputs, _ in batch]))), np.stack([t for _, t in batch])


def _checked_ids(ids: Sequence[int]) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise GenError("need at least 2 tokens to score; use a longer text")
    return ids


def exact_loss(
    logits_of: LogitsFunction,
    ids: Sequence[int],
    block_size: int,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """Mean negative log-likelihood in nats per token, and the number of tokens scored."""
    ids = _checked_ids(ids)
    total_nll = 0.0
    scored = 0
    for log_probs, targets in _scored_windows(logits_of, ids, block_size, batch_size):
        total_nll -= np.take_along_axis(log_probs, targets[..., None], axis=-1).sum()
        scored += targets.size
        if progress:
            progress(targets.size)
    return total_nll / scored, scored


@dataclass
class TokenScores:
    """Every token but the first, scored as exact_loss scores it: `logprobs[i]` is token i + 1's
    log-probability given the ones before it in its window, `top_ids[i]` and `top_logprobs[i]`
    the `top_n` likeliest tokens at that position, best first."""

    logprobs: np.ndarray  # (len - 1,) float64
    top_ids: np.ndarray  # (len - 1, top_n) int64
    top_logprobs: np.ndarray  # (len - 1, top_n) float64


def token_scores(logits_of: LogitsFunction, ids: Sequence[int], block_size: int, top_n: int = 0,
                 batch_size: int = 32) -> TokenScores:
    """Each token's log-probability (and the top_n alternatives), in exact_loss's windows."""
    ids = _checked_ids(ids)
    logprobs, top_ids, top_logprobs = [], [], []
    for log_probs, targets in _scored_windows(logits_of, ids, block_size, batch_size):
        logprobs.append(np.take_along_axis(log_probs, targets[..., None], axis=-1).reshape(-1))
        flat = log_probs.reshape(-1, log_probs.shape[-1])
        best = largest(flat, top_n)  # ties to the lower id, as greedy
        top_ids.append(best)
        top_logprobs.append(np.take_along_axis(flat, best, axis=-1))
    return TokenScores(np.concatenate(logprobs), np.concatenate(top_ids), np.concatenate(top_logprobs))


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
