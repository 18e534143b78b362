"""gen.export: a checkpoint to one ONNX file that the torch-free runtime runs.

`export_onnx(checkpoint, path, options=ExportOptions(...))` and
`export_model(model, path, tokenizer_document=..., options=...)` live in gen.export.onnx_export,
with ExportOptions (opset, quantize, verify, overwrite, portable, static_cache, progress);
they need the `train` extra (torch, onnx, onnxscript), which is imported only when
one of them is first used, so that `gen --help` stays light. How a model plugin takes
part is described in gen.export.onnx_export and docs/export.md.
"""
from __future__ import annotations

__all__ = ["ExportOptions", "ExportResult", "export_model", "export_onnx"]


def __getattr__(name: str):
    if name in __all__:
        from gen.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'gen.export' has no attribute {name!r}")
