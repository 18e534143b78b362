"""gen.core: the plugin API, the model, tokenizer and sampler contracts and helpers, the CLI.

Everything importable from here is torch-free; the training loop (gen.core.train)
imports torch when it runs.
"""
from gen.core.errors import GenError
from gen.core.hookspecs import hookimpl, hookspec
from gen.core.model import LanguageModel, has_kv_cache
from gen.core.sampling import (
    LogitsFilter,
    Sampler,
    argmax,
    check_logits,
    draw,
    mask_beyond_mass,
    mask_logits,
    softmax,
)
from gen.core.tokenizer import Tokenizer

__all__ = [
    "GenError",
    "LanguageModel",
    "LogitsFilter",
    "Sampler",
    "Tokenizer",
    "argmax",
    "check_logits",
    "draw",
    "has_kv_cache",
    "hookimpl",
    "hookspec",
    "mask_beyond_mass",
    "mask_logits",
    "softmax",
]
