"""gen.runtime: text generation from a gen ONNX export on onnxruntime and numpy, without torch.

`Generator` (gen.runtime.generator) loads a `model.onnx` written by `gen export` and
generates text; `onnx_logits_function` (gen.runtime.scoring) scores it; the file
contract is in gen.runtime.artifact. Importing this package is light: onnxruntime
is imported when a Generator is first used.
"""
from __future__ import annotations

__all__ = ["Generator", "onnx_logits_function"]


def __getattr__(name: str):
    # Lazy, so that `gen run --help` and the CLI's start-up never import onnxruntime.
    if name == "Generator":
        from gen.runtime.generator import Generator

        return Generator
    if name == "onnx_logits_function":
        from gen.runtime.scoring import onnx_logits_function

        return onnx_logits_function
    raise AttributeError(f"module 'gen.runtime' has no attribute {name!r}")
