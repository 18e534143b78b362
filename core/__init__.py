"""gen.core: the plugin API, the tokenizer and sampler protocols and helpers, the CLI.

Everything importable from here is torch-free; the training loop (gen.core.train)
imports torch when it runs.
"""
from gen.core.errors import GenError
from gen.core.hookspecs import hookimpl, hookspec
from gen.core.sampling import (
    LogitsFilter,
    Sampler,
    argmax,
    check_logits,
    draw,
    mask_logits,
    softmax,
)
from gen.core.tokenizer import Tokenizer

__all__ = [
    "GenError",
    "LogitsFilter",
    "Sampler",
    "Tokenizer",
    "argmax",
    "check_logits",
    "draw",
    "hookimpl",
    "hookspec",
    "mask_logits",
    "softmax",
]
