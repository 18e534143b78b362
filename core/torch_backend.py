"""Running a torch model for the shared generation loop in gen.core.generate.

The backend only runs the model: every policy (context sliding, padding, sampling,
stop strings) lives in gen.core.generate, so the torch generator (`gen sample`) and
the onnxruntime generator (`gen run`) produce the same text.
"""
from __future__ import annotations

import numpy as np
import torch


class TorchBackend:
    """A torch model as a gen.core.generate.Backend.

    Models with `forward_cached` and `empty_past` (gpt) are always run through the
    cached forward, which honours the attention mask and the positions of left-padded
    rows; with use_cache=False every step starts from an empty past and feeds the whole
    window again. Other models (bigram) get a plain forward on the window: their
    logits depend on the last token only, which is never padding.
    """

    def __init__(self, model, device: str = "cpu", use_cache: bool = True):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.block_size = int(model.config.block_size)
        self.has_cached_forward = hasattr(model, "forward_cached") and hasattr(model, "empty_past")
        self.uses_cache = bool(use_cache and self.has_cached_forward)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        """(B, T) int64 ids, (B, P+T) int64 mask, past or None -> ((B, vocab) float32 logits, past)."""
        with torch.inference_mode():
            ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
            if self.has_cached_forward:
                mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)).to(self.device)
                if past is None:
                    past = self.model.empty_past(ids.shape[0], self.device)
                logits, past = self.model.forward_cached(ids, mask, past)  # (B, T, vocab)
                if not self.uses_cache:
                    past = None
            else:
                logits, _ = self.model(ids)  # (B, T, vocab)
            last = logits[:, -1, :].float().cpu().numpy()  # (B, vocab)
        return last, past
