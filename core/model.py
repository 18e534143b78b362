"""The model contract: what a model plugin provides, written once (this module needs no torch).

A model plugin registers a class (with `register_models`) that is a `torch.nn.Module`
and follows this contract; subclassing `LanguageModel` beside `nn.Module` gives it
`from_config` and `config_dict` for free:

    @dataclass
    class MLPConfig:
        vocab_size: int = 65      # set by gen from the tokenizer
        block_size: int = 64      # the longest context the model reads
        hidden: int = 256         # the model's own options ...

    class MLP(LanguageModel, nn.Module):
        Config = MLPConfig
        training_defaults = {"lr": 1e-2}   # optional

        def __init__(self, config: MLPConfig): ...
        def forward(self, idx, targets=None): ...   # -> (logits, loss)

Required:
- `Config`: a dataclass of the model's options. `vocab_size` and `block_size` are
  among its fields (`block_size`: the longest context the model reads at once, and the
  length of training windows); gen sets `vocab_size` from the tokenizer, the user sets the rest
  with `--model NAME:KEY=VALUE,...` (their types and defaults come from the fields).
  Range checks go in `__post_init__`, raising `GenError`.
- `from_config(values: dict)` (classmethod) and `config_dict() -> dict`: the model
  from its config as JSON, and back. Checkpoints and ONNX files store the config.
- `forward(idx, targets=None) -> (logits, loss)`: idx (B, T) int64 with
  T <= block_size; logits (B, T, vocab); loss the mean cross-entropy when targets
  (B, T) are given, else None. Causality is a contract: the logits at position t
  never depend on tokens after t.

Optional:
- `training_defaults`: a dict of `gen train` options (`lr`, `max_iters`, ...) that
  this model trains best with. They apply when neither the command line nor the
  config file gives the option.
- A KV cache, for fast generation and for the cache inputs of the ONNX export:
      forward_cached(input_ids, attention_mask, past_key_values) -> (logits, presents)
      empty_past(batch_size, device=None) -> [(key, value), ...]
  input_ids (B, T) int64; attention_mask (B, P+T) int64, 1 for real tokens and 0 for
  left padding (positions count real tokens only); past_key_values one (key, value)
  pair per layer, each (B, heads, P, head_size) float32, P possibly 0; logits
  (B, T, vocab); presents the pairs grown to P+T. `empty_past` gives the zero-length
  pairs of a prefill, on `device` (default: the model's). A model has a cache when it
  defines both (`has_kv_cache`); an ONNX export records it in its metadata (`n_layer`
  > 0), which is how the torch-free runtime knows.

Without a cache, generation feeds the last `block_size` tokens at every step through
`forward`. A batch of prompts of different lengths is left-padded with token id 0
(and such a model is given no mask), so for a prompt's text in a batch to equal its
text alone, the model must not depend on absolute positions, and a model that looks
before the start of the sequence (an MLP over the last few tokens) must fill that
window with token 0 too. `block_size` is the longest context the model reads at once,
and the length of the windows training cuts.
"""
from __future__ import annotations

import dataclasses

from gen.core.errors import GenError
from gen.core.specs import Option, convert_options, options_of

# Set by gen from the tokenizer, so not an option a user gives.
SET_BY_GEN = ("vocab_size",)


class LanguageModel:
    """Base class of model plugins, beside torch.nn.Module: `class GPT(LanguageModel, nn.Module)`."""

    Config: type = None  # a dataclass of the model's options
    training_defaults: dict = {}  # gen train options this model needs, e.g. {"lr": 0.1}

    @classmethod
    def from_config(cls, values: dict):
        """The model built from its config as JSON (checkpoints store it this way)."""
        return cls(config_from_dict(cls.Config, values))

    def config_dict(self) -> dict:
        """The model's config as a JSON-serialisable dict."""
        return dataclasses.asdict(self.config)


def config_from_dict(config_class, values: dict):
    """An instance of the dataclass `config_class` from `values`, checking names and types."""
    if not isinstance(values, dict):
        raise GenError(f"a {config_class.__name__} must be a JSON object, got {type(values).__name__}")
    what = config_class.__name__
    options = options_of(config_class)
    return config_class(**convert_options(values, options, what))


def model_options(model_class) -> dict[str, Option]:
    """The options a user may give a model (`--model NAME:KEY=VALUE`): its Config's fields."""
    config_class = getattr(model_class, "Config", None)
    if config_class is None or not dataclasses.is_dataclass(config_class):
        raise GenError(f"model {model_class.__name__} has no Config dataclass; see gen.core.model for the contract")
    return {name: option for name, option in options_of(config_class).items() if name not in SET_BY_GEN}


def has_kv_cache(model) -> bool:
    """Whether a model offers the cached step (forward_cached and empty_past)."""
    return callable(getattr(model, "forward_cached", None)) and callable(getattr(model, "empty_past", None))
