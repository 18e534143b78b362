"""The MLP language model of Bengio et al. (2003), "A Neural Probabilistic Language Model".

To predict the token after position t, the model looks up the embeddings of the last
`context` tokens (t-context+1 .. t), concatenates them, passes them through one tanh
hidden layer and projects to the vocabulary:

    logits_t = W_out · tanh(W_hidden · [e(x_{t-context+1}); ...; e(x_t)] + b_hidden) + b_out

Every position is computed at once: the (B, T) batch of tokens becomes a (B, T, context)
batch of windows, one per position, so a forward pass is a few matmuls.

This module imports torch; gen imports it only when the `mlp` model is used (see
gen_mlp/__init__.py), never for `gen run` on an export.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from gen.core import GenError, LanguageModel

# The token the window is filled with before the start of the sequence. It is the id
# gen left-pads a batch of prompts with (a model without a KV cache is given no mask),
# so a short prompt sees the same window alone as in a left-padded batch.
PAD_ID = 0


@dataclass
class MLPConfig:
    vocab_size: int = 65  # set by gen from the tokenizer
    block_size: int = 64  # the windows training cuts and generation feeds (at least `context`)
    context: int = 8      # tokens each prediction looks at: t-context+1 .. t
    n_embd: int = 32      # embedding width of one token
    hidden: int = 256     # width of the tanh hidden layer

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_embd", "hidden"):
            value = getattr(self, name)
            if value < 1:
                raise GenError(f"mlp {name} must be at least 1, got {name}={value}")
        # A window longer than block_size would only ever hold padding beyond it.
        if not 1 <= self.context <= self.block_size:
            raise GenError(f"mlp context must be between 1 and block_size ({self.block_size}), "
                           f"got context={self.context}")


class MLP(LanguageModel, nn.Module):
    """An MLP over the last few tokens' embeddings (Bengio et al., 2003)."""

    Config = MLPConfig
    # Measured with gen's default schedule on Tiny Shakespeare (README.md): validation
    # loss 1.80 with 1e-2, against 1.87 with gen's default 3e-3 and 1.82 with 3e-2.
    training_defaults = {"lr": 1e-2}

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.hidden = nn.Linear(config.context * config.n_embd, config.hidden)
        self.lm_head = nn.Linear(config.hidden, config.vocab_size)
        # Small output weights: the first predictions are near uniform, so training
        # starts at the loss ln(vocab) instead of above it from confident random guesses.
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        context = self.config.context

        # Fill the window before the first token with PAD_ID, then take, for every
        # position t, the `context` tokens ending at t (oldest first). Only tokens up to
        # t enter, so the model is causal by construction; and nothing depends on t
        # itself, so no absolute positions.
        padded = F.pad(idx, (context - 1, 0), value=PAD_ID)  # (B, context-1+T)
        windows = torch.stack([padded[:, j:j + T] for j in range(context)], dim=-1)  # (B, T, context)

        x = self.wte(windows)                # (B, T, context, n_embd)
        x = x.flatten(start_dim=2)           # (B, T, context*n_embd): the embeddings concatenated
        x = torch.tanh(self.hidden(x))       # (B, T, hidden)
        logits = self.lm_head(x)             # (B, T, vocab)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss
