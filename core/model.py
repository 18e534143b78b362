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
- A cache, for fast generation and for the cache inputs of the ONNX export, of one of
  two kinds (`cache_kind(model)` says which):

  A KV cache, which grows with the text (attention):
      forward_cached(input_ids, attention_mask, past_key_values) -> (logits, presents)
      empty_past(batch_size, device=None) -> [(key, value), ...]
  past_key_values one (key, value) pair per layer, each (B, heads, P, head_size)
  float32, P possibly 0; presents the pairs grown to P+T. `empty_past` gives the
  zero-length pairs of a prefill. An ONNX export records the layout in its metadata
  (`n_layer` > 0), which is how the torch-free runtime knows.

  A state of fixed size, which each step replaces (GRU, LSTM, state-space models):
      forward_cached(input_ids, attention_mask, state) -> (logits, new_state)
      empty_state(batch_size, device=None) -> {name: tensor}
  state a dict of float32 tensors, batch first, each of a shape that never changes
  (e.g. "h": (B, layers, hidden)); new_state the same names and shapes after the T new
  tokens. `empty_state` gives the state before the first token: zeros, which is what
  the torch-free runtime starts from (a learned start belongs inside forward_cached).
  Names are letters, digits and underscores. An ONNX export records the names and shapes in
  its metadata ("cache": "state", "state": {name: shape without the batch}).

  For both: input_ids (B, T) int64; attention_mask (B, P+T) int64, 1 for real tokens
  and 0 for padding, where P is the number of tokens the cache has seen; logits
  (B, T, vocab); tensors on `device` (default: the model's). Rows are padded on the
  left: in a batch, a shorter row's padding comes before its tokens, and a row whose
  generation ended keeps its slot with mask 0 from then on. A step's own mask is the
  last T columns of attention_mask. Positions count real tokens only, and a position
  whose mask is 0 must change nothing: no key or value that is attended, no state
  (a state model keeps a row's state as it is where its mask is 0). `gen export`
  checks this: a left-padded row must give the logits it gives alone.

Without a cache, generation feeds the last `block_size` tokens at every step through
`forward`. A batch of prompts of different lengths is left-padded with token id 0
(and such a model is given no mask), so for a prompt's text in a batch to equal its
text alone, the model must not depend on absolute positions, and a model that looks
before the start of the sequence (an MLP over the last few tokens) must fill that
window with token 0 too (`gen export` checks this as well). `block_size` is the
longest context the model reads at once, and the length of the windows training cuts.
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


KV, STATE = "kv", "state"  # the kinds of cache, as cache_kind names them


def cache_kind(model) -> str | None:
    """The kind of cache a model offers: "kv" (forward_cached and empty_past), "state"
    (forward_cached and empty_state), or None (generation feeds whole windows to forward)."""
    if not callable(getattr(model, "forward_cached", None)):
        return None
    kinds = [kind for kind, method in ((KV, "empty_past"), (STATE, "empty_state"))
             if callable(getattr(model, method, None))]
    if len(kinds) == 2:
        raise GenError(f"{type(model).__name__} defines both empty_past (a KV cache) and empty_state (a fixed-size "
                       f"state); define the one its forward_cached takes")
    return kinds[0] if kinds else None


def has_kv_cache(model) -> bool:
    """Whether a model offers the cached step with a KV cache (forward_cached and empty_past)."""
    return cache_kind(model) == KV
