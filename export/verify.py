"""Check an exported file against the torch model it came from, in onnxruntime.

Cases: batch sizes 1 and 3; prompt lengths 1, 7 and block_size; for a model with a
KV cache each length also with a past that fills the rest of the context (the last
decode step before the cache slides, the case where positions are largest). Rows of
the batch of 3 are left-padded by different amounts, so the attention mask and the
positions derived from it are exercised too. The past comes from torch's own prefill
of a random prefix, as in real generation. Both sides see the same inputs; the
largest absolute difference of the logits (and of the returned cache) must stay
under the tolerance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime
import torch

from gen.core.errors import GenError
from gen.runtime.artifact import ATTENTION_MASK, INPUT_IDS, past_names

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


def verify_export(
    model: torch.nn.Module,
    path: str | Path,
    cache,
    tolerance: float = TOLERANCE,
    progress: Callable[[str], None] | None = print,
) -> float:
    """Compare the file at `path` with `model`; return the max abs logits difference.

    `cache` is the model's CacheShape, or None for a model exported without a cache.
    Raises GenError naming the first case over `tolerance`.
    """
    say = progress or (lambda message: None)
    config = model.config_dict()
    block_size, vocab_size = config["block_size"], config["vocab_size"]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GenError(f"verification failed: onnxruntime {onnxruntime.__version__} cannot load the export: {first_line}") from None
    generator = torch.Generator().manual_seed(1234)
    worst = 0.0
    for batch, length, past_length in _cases(block_size, cache is not None):
        ids = torch.randint(0, vocab_size, (batch, past_length + length), generator=generator)
        mask = _mask(batch, past_length + length)
        input_ids, past_ids = ids[:, past_length:], ids[:, :past_length]
        with torch.no_grad():
            if cache is None:
                expected_logits, _ = model(input_ids)
                expected_cache = []
                feed = {INPUT_IDS: input_ids.numpy(), ATTENTION_MASK: mask.numpy()}
            else:
                past = model.empty_past(batch)
                if past_length:
                    _, past = model.forward_cached(past_ids, mask[:, :past_length], past)
                expected_logits, presents = model.forward_cached(input_ids, mask, past)
                expected_cache = [tensor for pair in presents for tensor in pair]
                feed = {INPUT_IDS: input_ids.numpy(), ATTENTION_MASK: mask.numpy()}
                feed.update(zip(past_names(cache.n_layer), (t.numpy() for pair in past for t in pair)))
        outputs = session.run(None, feed)
        logits_diff = float(np.abs(outputs[0] - expected_logits.numpy()).max())
        cache_diff = max(
            (float(np.abs(got - want.numpy()).max()) for got, want in zip(outputs[1:], expected_cache)),
            default=0.0,
        )
        past_text = f", past {past_length}" if cache is not None else ""
        cache_text = f", KV cache {cache_diff:.2e}" if cache is not None else ""
        say(f"      batch {batch}, length {length}{past_text}: max |logits diff| {logits_diff:.2e}{cache_text}")
        if not (logits_diff <= tolerance and cache_diff <= tolerance):  # also catches NaN
            raise GenError(
                f"verification failed: batch {batch}, length {length}{past_text}: onnxruntime differs "
                f"from torch by {max(logits_diff, cache_diff):.2e} (> {tolerance:g}); the export is wrong "
                f"(rerun with --no-verify to keep the file for inspection)"
            )
        worst = max(worst, logits_diff)
    say(f"      verified: max abs logits difference {worst:.2e} (tolerance {tolerance:g})")
    return worst
