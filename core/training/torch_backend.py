"""A torch model as a backend of the shared generation loop and the scorer.

The backend only runs the model: every policy (context sliding, padding, sampling,
stop strings) lives in gen.core.generation, so the torch generator (`gen sample`) and
the onnxruntime generator (`gen run`) produce the same text. Its methods are those
of the onnxruntime backend (gen.runtime.onnx_model.OnnxModel); `gen.core.cli.backends.open_backend`
opens either from a path.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from gen.core.generation import BackendBase
from gen.core.model import KV, STATE, cache_kind


class TorchBackend(BackendBase):
    """A torch model as a gen.core.generation.Backend.

    Models with a cache (gen.core.model.cache_kind: a KV cache, or a fixed-size state
    passed as the model's dict) always run through the cached forward, which honours the
    attention mask and the positions of left-padded rows; with use_cache=False every step
    starts from an empty past and feeds the whole window again. Other models (bigram) get
    a plain forward on the window: their logits depend on the last token only, which is
    never padding.
    """

    def __init__(self, model, device: str = "cpu", use_cache: bool = True, checkpoint=None):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        config = model.config_dict()
        self.block_size = int(config["block_size"])
        self.vocab_size = int(config["vocab_size"])
        self.cache_kind = cache_kind(model)  # "kv", "state" or None
        self.has_cache = self.cache_kind is not None
        self.uses_cache = bool(use_cache and self.has_cache)
        self.checkpoint = checkpoint  # the gen.core.training.checkpoint.Checkpoint it came from, if any
        self.tokenizer = checkpoint.tokenizer if checkpoint is not None else None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", use_cache: bool = True) -> "TorchBackend":
        """The checkpoint (or run directory's best checkpoint) at `path`, on `device`."""
        from gen.core.training.checkpoint import load_checkpoint
        from gen.core.training.devices import resolve_device

        torch_device = str(resolve_device(device))
        loaded = load_checkpoint(path, device=torch_device)
        return cls(loaded.model, device=torch_device, use_cache=use_cache, checkpoint=loaded)

    def empty_past(self, batch_size: int):
        if self.cache_kind == KV:
            return self.model.empty_past(batch_size, self.device)
        if self.cache_kind == STATE:
            return self.model.empty_state(batch_size, self.device)
        return None

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        """The model on numpy inputs: ((B, T, vocab) logits as a torch tensor, past)."""
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
        if not self.has_cache:
            logits, _ = self.model(ids)  # (B, T, vocab)
            return logits, None
        mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)).to(self.device)
        if past is None:
            past = self.empty_past(ids.shape[0])
        logits, past = self.model.forward_cached(ids, mask, past)  # (B, T, vocab)
        return logits, past if self.uses_cache else None

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        """(B, T) int64 ids, (B, P+T) int64 mask, past or None -> ((B, T, vocab) float32 logits, past)."""
        with torch.inference_mode():
            logits, past = self._run(input_ids, attention_mask, past)
            return logits.float().cpu().numpy(), past

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        """Like forward, but only the last position's logits leave the device: ((B, vocab), past)."""
        with torch.inference_mode():
            logits, past = self._run(input_ids, attention_mask, past)
            return logits[:, -1, :].float().cpu().numpy(), past

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Scoring uses the training forward (plain causal attention), as training measured it."""
        with torch.inference_mode():
            ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
            logits, _ = self.model(ids)  # (B, T, vocab)
            return logits.float().cpu().numpy()
