"""A GRU language model whose cache is a fixed-size state (gen.core.model's "state" cache).

Each token's embedding goes through `n_layer` GRU layers and a linear projection to the
vocabulary. What generation carries from one step to the next is each layer's hidden
state, `state["h"]` of shape (batch, n_layer, hidden): the same size after 10 tokens as
after 10,000, where an attention model's KV cache grows with the text.

The state contract asks that padding change nothing. In gen, padding is on the left: a
step's rows are its tokens right-aligned, with mask 0 before them (a whole row of 0s for a
slot that takes no part). torch's nn.GRU runs every position, so `forward_cached` shifts each
row left by its padding before the GRU (its real tokens then start at the row's own state),
reads each layer's state after the row's last real token, and shifts the outputs back. A row
with no real token keeps its state. This is all gathers on the batch, no Python loop over
positions, so torch.onnx.export(dynamo=True) traces it with dynamic batch and length, nn.GRU
becoming ONNX's GRU operator.

This module imports torch; gen imports it only when the `gru` model is used (see
gen_gru/__init__.py), never for `gen run` on an export.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from gen.core import GenError, LanguageModel


@dataclass
class GRUConfig:
    vocab_size: int = 65  # set by gen from the tokenizer
    block_size: int = 64  # the windows training cuts; generation re-reads the last half past it
    n_embd: int = 32      # embedding width of one token
    hidden: int = 128     # width of each layer's state
    n_layer: int = 1      # GRU layers, one above the other

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_embd", "hidden", "n_layer"):
            value = getattr(self, name)
            if value < 1:
                raise GenError(f"gru {name} must be at least 1, got {name}={value}")


class GRU(LanguageModel, nn.Module):
    """A GRU language model with a fixed-size state (gen.core.model: empty_state, forward_cached)."""

    Config = GRUConfig

    def __init__(self, config: GRUConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # One nn.GRU per layer rather than nn.GRU(num_layers=...): forward_cached needs each
        # layer's outputs to read its state after a row's last real token.
        self.layers = nn.ModuleList(
            nn.GRU(config.n_embd if i == 0 else config.hidden, config.hidden, batch_first=True)
            for i in range(config.n_layer)
        )
        self.lm_head = nn.Linear(config.hidden, config.vocab_size)
        # Small output weights: the first predictions are near uniform (loss ln(vocab)).
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.lm_head.bias)

    def empty_state(self, batch_size: int, device=None) -> dict[str, torch.Tensor]:
        """The state before the first token: zeros, (batch_size, n_layer, hidden)."""
        device = device if device is not None else self.lm_head.weight.device
        return {"h": torch.zeros(batch_size, self.config.n_layer, self.config.hidden, device=device)}

    def _layers(self, x: torch.Tensor, h: torch.Tensor, last: torch.Tensor | None = None):
        """x (B, T, n_embd) through the layers, each from its state in h (B, n_layer, hidden).
        Returns the top layer's outputs (B, T, hidden) and, when `last` (B, 1) gives each row's
        last position to keep, every layer's state after it (B, n_layer, hidden)."""
        states = []
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, h[:, i].unsqueeze(0).contiguous())  # nn.GRU takes (1, B, hidden)
            if last is not None:
                states.append(torch.gather(x, 1, last.unsqueeze(-1).expand(-1, 1, x.size(-1))))  # (B, 1, hidden)
        return x, (torch.cat(states, dim=1) if last is not None else None)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        h = self.empty_state(B, idx.device)["h"]
        x, _ = self._layers(self.wte(idx), h)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss

    def forward_cached(self, input_ids, attention_mask, state):
        """(B, T) ids, (B, P+T) mask, {"h": (B, n_layer, hidden)} -> ((B, T, vocab) logits, new state)."""
        T = input_ids.size(1)
        own = attention_mask[:, -T:]  # this step's columns (the contract: the mask's last T)
        padding = (own == 0).sum(dim=1, keepdim=True)  # (B, 1): the row's left padding in this step
        positions = torch.arange(T, device=input_ids.device).unsqueeze(0)  # (1, T)
        # Each row shifted left by its padding: its real tokens first, then copies of its last
        # token, whose outputs nothing reads.
        shifted = torch.gather(input_ids, 1, (positions + padding).clamp(max=T - 1))
        real = T - padding  # (B, 1): real tokens of each row
        x, after = self._layers(self.wte(shifted), state["h"], last=(real - 1).clamp(min=0))
        h = torch.where((real > 0).unsqueeze(-1), after, state["h"])  # a row of padding keeps its state
        # The outputs back in place; the padding positions get copies, which the mask ignores.
        x = torch.gather(x, 1, (positions - padding).clamp(min=0).unsqueeze(-1).expand(-1, -1, x.size(-1)))
        return self.lm_head(x), {"h": h}
