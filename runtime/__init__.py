"""gen.runtime: text generation from a gen ONNX export on onnxruntime and numpy, without torch.

`Generator` (gen.runtime.generator) loads a `model.onnx` written by `gen export` and
generates text; `open_backend` (gen.runtime.backends) opens an export or a
checkpoint behind the same methods, for scoring and generation; the file contract is
in gen.runtime.artifact. Importing this package is light: onnxruntime is imported
when a Generator is first used.
"""
from __future__ import annotations

__all__ = ["Generator", "open_backend"]


def __getattr__(name: str):
    # Lazy, so that `gen run --help` and the CLI's start-up never import onnxruntime.
    if name == "Generator":
        from gen.runtime.generator import Generator

        return Generator
    if name == "open_backend":
        from gen.runtime.backends import open_backend

        return open_backend
    raise AttributeError(f"module 'gen.runtime' has no attribute {name!r}")
