"""Sampler helpers and the `--sampler NAME:KEY=VALUE,...` machinery (numpy, no torch).

A sampler turns the logits of the last position into next-token ids:

    sampler(logits: float32 (batch, vocab), rng: np.random.Generator) -> int64 (batch,)

A *filter* is a sampler that only reshapes the distribution (temperature, top-k,
top-p): it subclasses `LogitsFilter` and implements `filter(logits) -> logits`.
Filters chain before one final draw, so `top_k:k=40` then `temperature:t=0.8`
applies both and then draws from the result.
"""
from __future__ import annotations

import inspect
import math
from typing import Protocol, Sequence

import numpy as np

from gen.core.errors import GenError


class Sampler(Protocol):
    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


# --- helpers for sampler authors -------------------------------------------------


def check_logits(logits: np.ndarray) -> np.ndarray:
    """Return logits as a float32 (batch, vocab) array; reject NaN with a clear error."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise GenError(f"a sampler takes logits of shape (batch, vocab), got shape {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any():  # -inf is a masked token, fine
        raise GenError(
            "the model produced NaN or infinite logits; the checkpoint or export is broken "
            "(retrain or re-export)"
        )
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, computed stably (masked -inf entries get 0)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def mask_logits(logits: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """A copy of `logits` with the entries where `remove` is True set to -inf."""
    return np.where(remove, np.float32(-np.inf), logits).astype(np.float32)


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One id per row drawn from the probabilities `probs` (batch, vocab) with `rng`.

    One uniform number per row and a search in the cumulative sum: exact,
    reproducible for a seed, and the same on every backend.
    """
    probs = np.asarray(probs, dtype=np.float64)
    cumulative = np.cumsum(probs, axis=-1)
    uniforms = rng.random(probs.shape[0]) * cumulative[:, -1]
    ids = (cumulative <= uniforms[:, None]).sum(axis=-1)  # first index whose sum passes u
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


def argmax(logits: np.ndarray) -> np.ndarray:
    """The most likely id per row, as int64."""
    return np.asarray(logits).argmax(axis=-1).astype(np.int64)


class LogitsFilter:
    """Base class of samplers that reshape the distribution, then draw from it.

    Subclasses implement `filter`; used alone, a filter draws with multinomial
    sampling, and in a chain it hands its logits on to the next sampler.
    """

    def filter(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return draw(softmax(self.filter(check_logits(logits))), rng)


class SamplerChain:
    """Filters applied in order, then one final sampler (multinomial unless given)."""

    def __init__(self, filters: Sequence[LogitsFilter], final: Sampler):
        self.filters = list(filters)
        self.final = final

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits = check_logits(logits)
        for logits_filter in self.filters:
            logits = logits_filter.filter(logits)
        return self.final(logits, rng)


# --- `--sampler` specs ------------------------------------------------------------


def _option_types(cls) -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters
    return {
        name: parameter
        for name, parameter in parameters.items()
        if name != "self" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def _describe_options(options: dict[str, inspect.Parameter]) -> str:
    if not options:
        return "it takes no options"
    described = []
    for name, parameter in options.items():
        kind = _parameter_type(parameter).__name__
        default = "" if parameter.default is parameter.empty else f"={parameter.default!r}"
        described.append(f"{name} ({kind}{default})")
    return "accepted options: " + ", ".join(described)


def _parameter_type(parameter: inspect.Parameter) -> type:
    annotation = parameter.annotation
    if isinstance(annotation, str):  # from __future__ import annotations
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, None)
    if annotation in (int, float, bool, str):
        return annotation
    if parameter.default is not parameter.empty and parameter.default is not None:
        return type(parameter.default)
    return str


def _convert(text: str, kind: type, name: str, spec: str, accepted: str):
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if math.isnan(value):
                raise ValueError
            return value
        return kind(text)
    except ValueError:
        raise GenError(
            f"sampler option {name}={text!r} in {spec!r} is not a valid {kind.__name__}; {accepted}"
        ) from None


def parse_sampler_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split 'NAME[:KEY=VALUE[,KEY=VALUE...]]' into the name and raw option strings."""
    name, colon, rest = spec.strip().partition(":")
    if not name or (colon and not rest):
        raise GenError(f"malformed sampler spec {spec!r}; use NAME[:KEY=VALUE[,KEY=VALUE...]], e.g. top_k:k=40")
    options: dict[str, str] = {}
    for item in rest.split(",") if rest else []:
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key or not value:
            raise GenError(f"malformed sampler spec {spec!r}: {item!r} is not KEY=VALUE; e.g. top_p:p=0.9")
        if key in options:
            raise GenError(f"malformed sampler spec {spec!r}: option {key!r} given twice")
        options[key] = value
    return name, options


def build_sampler(spec: str, registry=None):
    """One sampler object from a spec string, with its options typed from __init__."""
    from gen.core.plugins import get_registry

    registry = registry or get_registry()
    name, raw_options = parse_sampler_spec(spec)
    cls = registry.get("sampler", name)
    options = _option_types(cls)
    accepted = _describe_options(options)
    kwargs = {}
    for key, text in raw_options.items():
        if key not in options:
            raise GenError(f"unknown option {key!r} for sampler {name!r}; {accepted}")
        kwargs[key] = _convert(text, _parameter_type(options[key]), key, spec, accepted)
    try:
        return cls(**kwargs)
    except GenError:
        raise
    except (TypeError, ValueError) as error:
        raise GenError(f"sampler {spec!r}: {error}; {accepted}") from None


def build_sampler_chain(specs: Sequence[str], registry=None) -> Sampler:
    """The sampler for repeated --sampler options: filters in order, then the final draw.

    No spec means multinomial sampling from the model's distribution. A chain
    ending in a filter draws with multinomial; a sampler that is not a filter
    (greedy, multinomial, a plugin's) may only stand last.
    """
    from gen.core.plugins import get_registry

    registry = registry or get_registry()
    samplers = [build_sampler(spec, registry) for spec in specs] or [build_sampler("multinomial", registry)]
    *leading, last = samplers
    for spec, sampler in zip(specs, leading):
        if not isinstance(sampler, LogitsFilter):
            raise GenError(
                f"sampler {spec!r} draws tokens itself, so it must come last in the --sampler chain"
            )
    if not leading:
        return last
    if isinstance(last, LogitsFilter):
        return SamplerChain(leading + [last], build_sampler("multinomial", registry))
    return SamplerChain(leading, last)
