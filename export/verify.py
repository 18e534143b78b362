"""Check an exported file against the torch model it came from, in onnxruntime.

Cases: batch sizes 1 and 3; prompt lengths 1, 7 and block_size; for a model with a
KV cache each length also with a past that fills the rest of the context (the last
decode step before the cache slides, the case where positions are largest). Rows of
the batch of 3 are left-padded by different amounts, so the attention mask and the
positions derived from it are exercised too. Each side's past comes from its own
prefill of a random prefix, as in real generation. Both sides see the same inputs;
the largest absolute difference of the logits (and of the returned cache) must stay
under the tolerance. Padding positions hold token 0, as generation pads.

Comparing the two sides on one padded batch cannot catch a model that ignores
`attention_mask` (both sides ignore it alike), which would then continue a prompt
differently in a batch than alone. So each left-padded row of the batches of 3 is
also run alone in onnxruntime (batch 1, no padding, its own prefill) and must give
the same logits for its real tokens, for every kind of model (with a KV cache, a
state, or none).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gen.core.errors import GenError

TOLERANCE = 1e-4
BATCH_SIZES = (1, 3)
PROMPT_LENGTHS = (1, 7)  # and block_size


def _mask(batch: int, length: int) -> torch.Tensor:
    """A (batch, length) mask with row i left-padded by 2 * i positions (at least 1 real token)."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        mask[row, :min(2 * row, length - 1)] = 0
    return mask


def _cases(block_size: int, cached: bool):
    """(batch, length, past length) triples to compare."""
    lengths = sorted({min(length, block_size) for length in PROMPT_LENGTHS} | {block_size})
    for batch in BATCH_SIZES:
        for length in lengths:
            yield batch, length, 0
            if cached and block_size - length > 0:
                yield batch, length, block_size - length


def _as_numpy(past, length: int) -> list[np.ndarray]:
    """A backend's past, `length` positions of it, as flat numpy arrays: torch's (key, value)
    pairs or state dict (by name, as the graph orders it), onnxruntime's list, or the buffers
    of a fixed-capacity cache."""
    if past is None:
        return []
    if hasattr(past, "arrays"):  # gen.runtime.onnx_model.CapacityCache
        return past.arrays(length)
    if isinstance(past, dict):
        past = [past[name] for name in sorted(past)]
    flat = [tensor for pair in past for tensor in pair] if past and isinstance(past[0], tuple) else past
    return [tensor.numpy() if isinstance(tensor, torch.Tensor) else tensor for tensor in flat]


def verify_export(
    model: torch.nn.Module,
    path: str | Path,
    tolerance: float = TOLERANCE,
    progress: Callable[[str], None] | None = print,
) -> float:
    """Compare the file at `path` with `model`; return the max abs logits difference.

    Both sides run through their generation backends (gen.core.training.torch_backend and
    gen.runtime.onnx_model), so what is verified is what `gen sample` and `gen run`
    execute. Raises GenError naming the first case over `tolerance`.
    """
    from gen.core.training.torch_backend import TorchBackend
    from gen.runtime.onnx_model import OnnxModel

    say = progress or (lambda message: None)
    expected_backend = TorchBackend(model)
    try:
        exported_backend = OnnxModel(path)
    except GenError as error:
        raise GenError(f"verification failed: {error}") from None
    block_size, vocab_size = expected_backend.block_size, expected_backend.vocab_size
    cached = expected_backend.has_cache
    cache_name = "state" if expected_backend.cache_kind == "state" else "KV cache"
    generator = torch.Generator().manual_seed(1234)
    worst = padded_worst = 0.0
    for batch, length, past_length in _cases(block_size, cached):
        ids = torch.randint(0, vocab_size, (batch, past_length + length), generator=generator).numpy()
        mask = _mask(batch, past_length + length).numpy()
        ids[mask == 0] = 0  # what generation pads with
        differences = []
        for backend in (expected_backend, exported_backend):
            # A past from the backend's own prefill of the first past_length tokens, as in generation.
            past = backend.empty_past(batch)
            if past_length:
                _, past = backend.forward(ids[:, :past_length], mask[:, :past_length], past)
            logits, presents = backend.forward(ids[:, past_length:], mask, past)
            differences.append((logits, _as_numpy(presents, past_length + length)))
        (expected_logits, expected_cache), (logits, cache) = differences
        logits_diff = float(np.abs(logits - expected_logits).max())
        cache_diff = max((float(np.abs(got - want).max()) for got, want in zip(cache, expected_cache)), default=0.0)
        past_text = f", past {past_length}" if cached else ""
        cache_text = f", {cache_name} {cache_diff:.2e}" if cached else ""
        say(f"      batch {batch}, length {length}{past_text}: max |logits diff| {logits_diff:.2e}{cache_text}")
        if not (logits_diff <= tolerance and cache_diff <= tolerance):  # also catches NaN
            raise GenError(
                f"verification failed: batch {batch}, length {length}{past_text}: onnxruntime differs "
                f"from torch by {max(logits_diff, cache_diff):.2e} (> {tolerance:g}); the export is wrong "
                f"(rerun with --no-verify to keep the file for inspection)"
            )
        worst = max(worst, logits_diff)
        padded_worst = max(padded_worst, _check_rows_alone(exported_backend, ids, mask, past_length, logits,
                                                           tolerance, f"batch {batch}, length {length}{past_text}"))
    say(f"      left-padded rows give the logits they give alone: max |logits diff| {padded_worst:.2e}")
    say(f"      verified: max abs logits difference {worst:.2e} (tolerance {tolerance:g})")
    return worst


def _run_alone(backend, ids: np.ndarray, past_length: int) -> np.ndarray:
    """The logits of one row's tokens after the first `past_length`, with nothing padded:
    a prefill of those first tokens (if any), then the rest, as generation runs a row alone."""
    ids = ids.reshape(1, -1)
    past = backend.empty_past(1)
    if past_length:
        _, past = backend.forward(ids[:, :past_length], np.ones((1, past_length), dtype=np.int64), past)
    logits, _ = backend.forward(ids[:, past_length:], np.ones_like(ids), past)
    return logits[0]


def _check_rows_alone(backend, ids: np.ndarray, mask: np.ndarray, past_length: int, batch_logits: np.ndarray,
                      tolerance: float, case: str) -> float:
    """Compare every left-padded row of a batch with the row alone; return the largest logits
    difference, or raise GenError naming the first row over `tolerance` (a model that ignores
    the mask: its text in a batch would differ from its text alone)."""
    worst = 0.0
    for row in range(ids.shape[0]):
        padding = int((mask[row] == 0).sum())
        if padding == 0:
            continue
        # The row's real tokens; those before the new ones (if any remain) are its past.
        alone = _run_alone(backend, ids[row, padding:], max(past_length - padding, 0))
        compared = batch_logits[row, -alone.shape[0]:]  # the new tokens' logits that are not padding
        difference = float(np.abs(compared - alone).max())
        if not difference <= tolerance:  # also catches NaN
            raise GenError(
                f"export refused: row {row} of a left-padded batch ({case}, {padding} padding tokens) gives logits "
                f"{difference:.2e} away from the same row alone (> {tolerance:g}); the model ignores attention_mask "
                f"and would continue a prompt differently in a batch: make forward_cached honour attention_mask "
                f"(padding changes no key, value or state), or forward not depend on positions (see gen.core.model)"
            )
        worst = max(worst, difference)
    return worst
