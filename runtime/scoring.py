"""Scoring an exported model: the logits function that `gen eval model.onnx` hands to
gen.core.scoring.exact_loss, the same exact loss a checkpoint is scored with (no torch)."""
from __future__ import annotations

import os

from gen.core.scoring import LogitsFunction
from gen.core.tokenizer import Tokenizer


def onnx_logits_function(
    path: str | os.PathLike, provider: str | None = None
) -> tuple[LogitsFunction, int, Tokenizer]:
    """(logits_function, block_size, tokenizer) of the export at `path`.

    logits_function maps (B, T) int64 ids, T <= block_size, to (B, T, vocab) float32
    logits, computed with an empty past and every position attended.
    """
    from gen.runtime.generator import Generator

    generator = Generator(path, provider=provider)
    return generator.logits, generator.block_size, generator.tokenizer
