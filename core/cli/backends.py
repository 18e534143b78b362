"""One way to open a model for generation or scoring: an ONNX export or a checkpoint.

    backend = open_backend("model.onnx")        # onnxruntime, no torch
    backend = open_backend("out")               # a checkpoint or run directory, with torch

Both give the methods of gen.core.generation.Backend (forward, step, logits,
empty_past, block_size, vocab_size) and a `tokenizer`; torch is imported only for a
checkpoint.
"""
from __future__ import annotations

import os


def is_onnx_path(path: str | os.PathLike) -> bool:
    """Whether `path` names an ONNX export rather than a checkpoint directory."""
    return os.fspath(path).endswith(".onnx") or os.path.isfile(path)


def open_backend(
    path: str | os.PathLike,
    *,
    device: str = "auto",
    provider: str | None = None,
    threads: int | None = None,
    use_cache: bool = True,
):
    """The model at `path`: an OnnxModel for an ONNX file, a TorchBackend for a checkpoint.

    `provider` and `threads` apply to an ONNX file (onnxruntime), `device` and
    `use_cache` to a checkpoint (torch).
    """
    if is_onnx_path(path):
        from gen.runtime.onnx_model import OnnxModel

        return OnnxModel(path, provider=provider, threads=threads)
    from gen.core.training.torch_backend import TorchBackend

    return TorchBackend.from_checkpoint(path, device=device, use_cache=use_cache)
