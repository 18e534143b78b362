"""The classic bigram language model: each token's row of a table is the next-token logits."""
from dataclasses import dataclass

import torch.nn as nn
from torch.nn import functional as F

from gen.core.errors import GenError
from gen.core.model import LanguageModel


@dataclass
class BigramConfig:
    vocab_size: int = 65
    block_size: int = 64  # training context; the model itself only looks at the last token

    def __post_init__(self):
        if not (1 <= self.vocab_size <= 2**24 and 1 <= self.block_size <= 2**20):
            raise GenError(f"bigram needs vocab_size from 1 to 16,777,216 and block_size from 1 to 1,048,576, "
                           f"got {self.vocab_size:,} and {self.block_size:,}")


class BigramLanguageModel(LanguageModel, nn.Module):
    """A vocab x vocab table of next-token logits."""

    Config = BigramConfig
    # A table of N(0, 1) logits learns far faster with a large learning rate than a
    # transformer does: 0.1 reaches the bigram's floor (about 2.48) in 1,500 steps.
    training_defaults = {"lr": 0.1}

    def __init__(self, config: BigramConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab)
        loss = None
        if targets is not None:
            B, T, V = logits.shape
            loss = F.cross_entropy(logits.view(B * T, V), targets.view(B * T))
        return logits, loss
