"""Building a model's config dataclass from a JSON dict, with clear errors (no torch)."""
from __future__ import annotations

import dataclasses

from gen.core.errors import GenError


def config_from_dict(config_class, values: dict):
    """An instance of the dataclass `config_class` from `values`, checking names and types."""
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise GenError(
            f"unknown {config_class.__name__} option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(fields)}"
        )
    checked = {}
    for name, value in values.items():
        expected = type(getattr(config_class, name, None)) if hasattr(config_class, name) else None
        if expected is bool and not isinstance(value, bool):
            raise GenError(f"{config_class.__name__}.{name} must be true or false, got {value!r}")
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise GenError(f"{config_class.__name__}.{name} must be a whole number, got {value!r}")
        if expected is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise GenError(f"{config_class.__name__}.{name} must be a number, got {value!r}")
        checked[name] = float(value) if expected is float else value
    return config_class(**checked)
