"""`NAME[:KEY=VALUE[,KEY=VALUE...]]`: how samplers, tokenizers and models are chosen (no torch).

One parser and one set of error messages for the three kinds:

    --sampler top_k:k=40      --tokenizer bpe:vocab_size=512      --model gpt:n_layer=6

A plugin's options are the keyword parameters of one callable, typed from their
annotations (`int`, `float`, `bool`, `str`) or else from their defaults:

| kind      | options are the parameters of            |
| --------- | ---------------------------------------- |
| sampler   | the class's `__init__`                    |
| tokenizer | its `train(text, ...)` classmethod        |
| model     | its `Config` dataclass                    |

Values from the command line are text and are converted to the parameter's type;
values from a TOML file or JSON already have a type, which is checked. Range checks
belong to the plugin (its `__init__`, `train` or `Config.__post_init__`), which
raises `GenError`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

from gen.core.errors import GenError

SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
BUILTIN_PROVIDER = "gen"  # who registered gen's own plugins, as `gen plugins` shows it
REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    """One keyword parameter of a plugin: its name, type and default (REQUIRED if none)."""

    name: str
    type: type
    default: object = REQUIRED

    def describe(self) -> str:
        default = "" if self.default is REQUIRED else f"={self.default!r}"
        return f"{self.name} ({self.type.__name__}{default})"


def _option_type(parameter: inspect.Parameter) -> type:
    annotation = parameter.annotation
    if isinstance(annotation, str):  # `from __future__ import annotations`
        # "float | None" -> float: the first simple type named
        names = [part.strip() for part in annotation.replace("Optional[", "").rstrip("]").split("|")]
        annotation = next((SIMPLE_TYPES[name] for name in names if name in SIMPLE_TYPES), None)
    if annotation in (int, float, bool, str):
        return annotation
    if parameter.default is not REQUIRED and parameter.default is not None:
        return type(parameter.default)
    return str


def options_of(target: Callable, skip: tuple[str, ...] = ()) -> dict[str, Option]:
    """The keyword options of `target` (a class's __init__, a function, a dataclass)."""
    parameters = inspect.signature(target).parameters
    return {
        name: Option(name, _option_type(parameter), parameter.default)
        for name, parameter in parameters.items()
        if name not in ("self", "cls", *skip)
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def describe_options(options: dict[str, Option]) -> str:
    if not options:
        return "it takes no options"
    return "accepted options: " + ", ".join(option.describe() for option in options.values())


def parse_spec(spec: str, kind: str) -> tuple[str, dict[str, str]]:
    """Split 'NAME[:KEY=VALUE[,KEY=VALUE...]]' into the name and the options as text."""
    example = {"sampler": "top_k:k=40", "tokenizer": "bpe:vocab_size=512", "model": "gpt:n_layer=6"}.get(
        kind, "NAME:KEY=VALUE"
    )
    if not isinstance(spec, str):
        raise GenError(f"a {kind} spec must be text like {example!r}, got {spec!r}")
    name, colon, rest = spec.strip().partition(":")
    name = name.strip()
    if not name or (colon and not rest.strip()):
        raise GenError(f"malformed {kind} spec {spec!r}; use NAME[:KEY=VALUE[,KEY=VALUE...]], e.g. {example}")
    options: dict[str, str] = {}
    for item in rest.split(",") if colon else []:
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key or not value:
            raise GenError(f"malformed {kind} spec {spec!r}: {item.strip()!r} is not KEY=VALUE; e.g. {example}")
        if key in options:
            raise GenError(f"malformed {kind} spec {spec!r}: option {key!r} given twice")
        options[key] = value
    return name, options


def format_spec(name: str, values: dict) -> str:
    """The spec string for a name and typed option values (the inverse of parse_spec)."""
    if not values:
        return name
    text = {True: "true", False: "false"}
    return name + ":" + ",".join(f"{key}={text.get(value, value) if isinstance(value, bool) else value}"
                                 for key, value in values.items())


def _from_text(text: str, kind: type):
    if kind is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError
        return lowered in ("true", "1", "yes")
    if kind is float:
        value = float(text)
        if math.isnan(value):
            raise ValueError
        return value
    return kind(text)


def _checked(value, kind: type):
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    raise ValueError


def convert_options(values: dict, options: dict[str, Option], what: str) -> dict:
    """`values` (text or already typed) converted and checked against `options`.

    `what` names the plugin in messages, e.g. "sampler 'top_k'". Every error lists
    the accepted options.
    """
    accepted = describe_options(options)
    converted = {}
    for key, value in values.items():
        option = options.get(key)
        if option is None:
            raise GenError(f"unknown option {key!r} for {what}; {accepted}")
        try:
            converted[key] = _from_text(value, option.type) if isinstance(value, str) else _checked(value, option.type)
        except (ValueError, OverflowError):
            raise GenError(f"{what} option {key}={value!r} is not a valid {option.type.__name__}; {accepted}") from None
    missing = [name for name, option in options.items() if option.default is REQUIRED and name not in converted]
    if missing:
        raise GenError(f"{what} needs the option(s) {', '.join(missing)}; {accepted}")
    return converted


def call_with_options(target: Callable, kwargs: dict, what: str, accepted: str):
    """target(**kwargs), with a TypeError or ValueError it raises turned into a GenError."""
    try:
        return target(**kwargs)
    except GenError:
        raise
    except (TypeError, ValueError) as error:
        raise GenError(f"{what}: {error}; {accepted}") from None
