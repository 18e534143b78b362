"""gen.core: the plugin API, the model, tokenizer and sampler contracts and helpers, the CLI.

Everything importable from here is torch-free; the training loop (gen.core.training.loop)
imports torch when it runs.
"""
from gen.core.errors import GenError
from gen.core.hookspecs import hookimpl, hookspec
from gen.core.model import LanguageModel, cache_kind, has_kv_cache
from gen.core.sampling import (
    LogitBias,
    LogitsFilter,
    RowStreams,
    Sampler,
    SamplerRecipe,
    SamplingContext,
    argmax,
    check_logits,
    draw,
    draw_from_logits,
    keep_only,
    largest,
    largest_unordered,
    log_softmax,
    mask_beyond_mass,
    mask_logits,
    remove_ids,
    seen_tokens,
    softmax,
    token_counts,
)
from gen.core.tokenizer import Tokenizer

__all__ = [
    "GenError",
    "LanguageModel",
    "LogitBias",
    "LogitsFilter",
    "RowStreams",
    "Sampler",
    "SamplerRecipe",
    "SamplingContext",
    "Tokenizer",
    "argmax",
    "cache_kind",
    "check_logits",
    "draw",
    "draw_from_logits",
    "has_kv_cache",
    "hookimpl",
    "hookspec",
    "keep_only",
    "largest",
    "largest_unordered",
    "log_softmax",
    "mask_beyond_mass",
    "mask_logits",
    "remove_ids",
    "seen_tokens",
    "softmax",
    "token_counts",
]
