"""gen.runtime: text generation from a gen ONNX export on onnxruntime and numpy, without torch.

`OnnxModel` (gen.runtime.onnx_model) loads a `model.onnx` written by `gen export` and
generates text; the file contract is in gen.runtime.artifact; `gen serve` is
gen.runtime.server over the continuous-batching gen.runtime.scheduler. Importing this
package is light: onnxruntime is imported when an OnnxModel is first used.

`Generator` is the earlier name of `OnnxModel`, kept so that existing code runs.
"""
from __future__ import annotations

__all__ = ["OnnxModel", "Generator"]


def __getattr__(name: str):
    # Lazy, so that `gen run --help` and the CLI's start-up never import onnxruntime.
    if name in ("OnnxModel", "Generator"):
        from gen.runtime.onnx_model import OnnxModel

        return OnnxModel
    raise AttributeError(f"module 'gen.runtime' has no attribute {name!r}")
