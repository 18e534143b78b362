"""A decoder-only transformer in the nanoGPT lineage, with a KV cache for generation.

Read top to bottom: the config, then the building blocks in the order
they depend on each other (attention, MLP, block), then the GPT itself.

Two forwards share every weight and every line of the trunk:
- `forward(idx, targets)` for training: whole sequences, causal attention.
- `forward_cached(input_ids, attention_mask, past_key_values)` for generation and
  ONNX export: new tokens attend to the cached keys and values of earlier ones.
  The mask is built explicitly because `is_causal=True` aligns the causal
  triangle top-left, which is wrong as soon as the cache holds earlier positions.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from gen.core.errors import GenError
from gen.core.model import LanguageModel


# The MLP's activation: the exact GELU, or its tanh approximation, which GPT-2 was trained
# with (Hugging Face's "gelu_new"); the two differ by up to about 1e-3, enough to matter
# for a pretrained model's logits.
ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # name -> nn.GELU's `approximate`

# Far beyond any model this code is for: a larger value is a typo or a hostile config
# file, which would otherwise have gen build millions of modules before failing.
GPT_SIZE_LIMITS = {"vocab_size": 2**24, "block_size": 2**20, "n_layer": 1024, "n_head": 1024, "n_embd": 2**16}


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear layers and LayerNorms; without is a little faster
    activation: str = "gelu"  # the MLP's: "gelu" (exact) or "gelu_tanh" (GPT-2's approximation)

    def __post_init__(self):
        for name, largest in GPT_SIZE_LIMITS.items():
            if not 1 <= getattr(self, name) <= largest:
                raise GenError(f"gpt {name} must be from 1 to {largest:,}, got {getattr(self, name):,}")
        if self.n_embd % self.n_head:
            raise GenError(
                f"gpt n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"e.g. --n-embd {self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise GenError(f"gpt dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise GenError(f"gpt activation must be {' or '.join(map(repr, ACTIVATIONS))}, got {self.activation!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask=None, past=None):
        """x (B, T, C); attn_mask (B, 1, T, P+T) bool or None for plain causal; past (k, v) or None."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, P+T, hs)
            v = torch.cat([past[1], v], dim=2)  # (B, nh, P+T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y)), (k, v)

    def weights(self, x):
        """The causal attention weights of x (B, T, C) without a past, as forward weighs the values:
        softmax(q @ k^T / sqrt(hs)) with the upper triangle (later tokens) masked. (B, nh, T, T)."""
        B, T, C = x.size()
        q, k, _ = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        tril = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        return F.softmax(scores.masked_fill(~tril, float("-inf")), dim=-1)


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=ACTIVATIONS[config.activation])
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, past=None):
        attended, present = self.attn(self.ln_1(x), attn_mask, past)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(LanguageModel, nn.Module):
    """A decoder-only transformer in the nanoGPT lineage, with a KV cache."""

    Config = GPTConfig
    # `gen export` writes this class (not its subclasses, which may compute something else)
    # as gen.export.gpt_graph's fused decode graph; see gen.export.onnx_export.writes_fused_graph.
    fused_graph = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of residual projections (GPT-2)
                torch.nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _trunk(self, idx, positions, attn_mask=None, past_key_values=None):
        """Embeddings, blocks, final LayerNorm and head: (B, T) ids -> (B, T, vocab) logits."""
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(positions)  # (T, C) or (B, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        presents = []
        for i, block in enumerate(self.transformer.h):
            past = None if past_key_values is None else past_key_values[i]
            x, present = block(x, attn_mask, past)
            presents.append(present)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        return logits, presents

    def forward(self, idx, targets=None):
        """Training and scoring: (B, T) ids -> ((B, T, vocab) logits, loss or None)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise GenError(f"cannot forward a sequence of {T} tokens; block_size is {self.config.block_size}")
        positions = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        logits, _ = self._trunk(idx, positions)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def forward_cached(self, input_ids, attention_mask, past_key_values):
        """One generation step (or a prefill) that reuses the keys and values of earlier tokens.

        input_ids (B, T) int64; attention_mask (B, P+T) int64, 1 for real tokens and 0
        for left padding; past_key_values a list of n_layer (key, value) pairs, each
        (B, nh, P, hs), P possibly 0. Returns (B, T, vocab) logits and the new pairs
        (B, nh, P+T, hs). Positions count real tokens only, so a left-padded prompt
        sees the same positions as it would alone.
        """
        T = input_ids.size(1)
        P = past_key_values[0][0].size(2)
        positions = (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)[:, -T:]  # (B, T)
        query_at = torch.arange(T, device=input_ids.device) + P  # (T,) absolute index of each query
        key_at = torch.arange(P + T, device=input_ids.device)  # (P+T,)
        causal = key_at[None, :] <= query_at[:, None]  # (T, P+T), aligned bottom-right
        # A query always sees itself, so that a padding row never has all keys masked (NaN).
        visible = attention_mask.bool()[:, None, :] | (key_at[None, :] == query_at[:, None])[None]  # (B, T, P+T)
        attn_mask = (causal[None] & visible)[:, None]  # (B, 1, T, P+T)
        return self._trunk(input_ids, positions, attn_mask, past_key_values)

    @torch.no_grad()
    def attention_weights(self, idx):
        """Every layer's attention weights over (B, T) ids: (n_layer, B, nh, T, T). Each layer's
        weights are computed from the input its attention saw in an ordinary forward (caught by
        a hook), so the trunk is the one forward runs."""
        inputs = []
        hooks = [block.attn.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
                 for block in self.transformer.h]
        try:
            self(idx)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack([block.attn.weights(x) for block, x in zip(self.transformer.h, inputs)])

    def empty_past(self, batch_size: int, device=None):
        """A zero-length cache for a prefill, on `device` (default: the model's)."""
        shape = (batch_size, self.config.n_head, 0, self.config.head_size)
        weight = self.lm_head.weight
        return [
            (torch.zeros(shape, dtype=weight.dtype, device=device or weight.device),
             torch.zeros(shape, dtype=weight.dtype, device=device or weight.device))
            for _ in range(self.config.n_layer)
        ]

    def crop_block_size(self, block_size: int) -> None:
        """Read at most `block_size` tokens from now on (a fine-tune on shorter windows than
        the model was trained on): the first block_size position embeddings are kept, as
        nanoGPT's crop_block_size does. The attention has no mask buffer to crop."""
        if not 1 <= block_size <= self.config.block_size:
            raise GenError(f"gpt can crop its block size to 1 .. {self.config.block_size}, not {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def num_params(self) -> int:
        """Parameters, not counting the position embeddings (nanoGPT's convention)."""
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()
