"""Training tokens/s of gen against nanoGPT's own training step, side by side in one run.

    python benchmarks/train_speed.py              # gen (defaults), gen float32, nanoGPT
    python benchmarks/train_speed.py --compile    # also gen with --compile (~30 s to compile)

The configuration is nanoGPT's CPU recipe for Tiny Shakespeare: 4 layers, 4 heads,
128 wide, block 64, batch 12, lr 1e-3, no dropout, no bias, char tokens.

nanoGPT's step is re-typed below from its model.py and train.py (the parts that run
on a CPU with --compile=False): its model, its configure_optimizers (plain AdamW on a
CPU), its get_batch and the body of its training loop. gen's step is
gen.core.train.Trainer.train_step, exactly what `gen train` runs.

What makes gen faster here (measured on 2 AMD EPYC cores with AVX512-BF16): bfloat16
autocast with torch's math attention kernel (flash attention's bfloat16 backward is
slow on a CPU), and fused AdamW; torch.compile adds more once its ~30 s are paid.
Without bias, as both run here, a step is ~1.5x faster than with it.

The variants take turns, a few steps each, over several rounds, so that other work
on the machine slows them all alike; the figures are the medians of the rounds.
Target (issue 3): gen at least 1.3x nanoGPT's 13,000 tokens/s (the issue's figure
for this kind of machine); the ratio measured here is printed beside it.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from gen.core.checkpoint import build_model
from gen.core.train_config import TrainConfig
from gen.core.data import load_dataset
from gen.core.train import Trainer, resolve_device, resolve_dtype

NANOGPT_TOKENS_PER_SECOND = 13_000  # the figure for nanoGPT on this kind of machine
TARGET_RATIO = 1.3


# --- nanoGPT, re-typed (model.py) -------------------------------------------------------


@dataclass
class NanoConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


class NanoLayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoCausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NanoBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = NanoLayerNorm(config.n_embd, bias=config.bias)
        self.attn = NanoCausalSelfAttention(config)
        self.ln_2 = NanoLayerNorm(config.n_embd, bias=config.bias)
        self.mlp = NanoMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class NanoGPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([NanoBlock(config) for _ in range(config.n_layer)]),
            ln_f=NanoLayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        device = idx.device
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        use_fused = device_type == "cuda"  # nanoGPT fuses AdamW on CUDA only
        extra_args = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)


class NanoTrainer:
    """nanoGPT's train.py loop body on a CPU (no autocast context, no grad scaler)."""

    def __init__(self, train_ids: np.ndarray, vocab_size: int, batch_size: int, block_size: int, lr: float):
        torch.manual_seed(1337)
        self.data = train_ids.astype(np.uint16)  # train.bin is uint16, read through np.memmap
        self.batch_size, self.block_size = batch_size, block_size
        self.model = NanoGPT(NanoConfig(block_size=block_size, vocab_size=vocab_size))
        self.optimizer = self.model.configure_optimizers(1e-1, lr, (0.9, 0.99), "cpu")
        self.lr = lr
        self.X, self.Y = self.get_batch()

    def get_batch(self):
        ix = torch.randint(len(self.data) - self.block_size, (self.batch_size,))
        x = torch.stack([torch.from_numpy((self.data[i:i + self.block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((self.data[i + 1:i + 1 + self.block_size]).astype(np.int64)) for i in ix])
        return x, y

    def train_step(self):
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.lr  # (get_lr(iter_num) in nanoGPT: a few float operations)
        logits, loss = self.model(self.X, self.Y)
        self.X, self.Y = self.get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()  # log_interval=1 in the CPU recipe


# --- gen ---------------------------------------------------------------------------------


def gen_trainer(dataset, batch_size: int, block_size: int, lr: float, dtype: str, compile: bool) -> Trainer:
    config = TrainConfig(batch_size=batch_size, block_size=block_size, lr=lr, warmup_iters=0,
                         max_iters=10**6, dtype=dtype, compile=compile, device="cpu")
    torch.manual_seed(config.seed)
    model = build_model("gpt", dict(vocab_size=dataset.tokenizer.vocab_size, block_size=block_size,
                                    n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False))
    device = resolve_device("cpu")
    return Trainer(config, dataset, model, device, resolve_dtype(dtype, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="shakespeare", help="a UTF-8 text file, or 'shakespeare' (downloaded once)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per variant first")
    parser.add_argument("--compile", action="store_true", help="also time gen with torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = load_dataset(args.data, tokenizer_spec="char", progress=False)
    vocab_size = dataset.tokenizer.vocab_size
    steps = {
        "nanoGPT": NanoTrainer(dataset.train_ids, vocab_size, args.batch_size, args.block_size, args.lr).train_step,
        "gen": gen_trainer(dataset, args.batch_size, args.block_size, args.lr, "auto", False).train_step,
        "gen float32": gen_trainer(dataset, args.batch_size, args.block_size, args.lr, "float32", False).train_step,
    }
    if args.compile:
        steps["gen compiled"] = gen_trainer(dataset, args.batch_size, args.block_size, args.lr, "auto", True).train_step
    dtype = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    print(f"config: 4 layers, 4 heads, 128 wide, block {args.block_size}, batch {args.batch_size}, "
          f"lr {args.lr}, no dropout, no bias; {torch.get_num_threads()} torch threads; "
          f"gen autocasts to {dtype} on this CPU")
    for name, step in steps.items():
        started = time.perf_counter()
        for _ in range(args.warmup):
            step()
        print(f"  warm-up of {name}: {time.perf_counter() - started:.1f} s for {args.warmup} steps", flush=True)

    seconds_per_step = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]  # nobody always goes first
        for name in order:
            started = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            seconds_per_step[name].append((time.perf_counter() - started) / args.steps)

    tokens_per_step = args.batch_size * args.block_size
    median = {name: statistics.median(values) for name, values in seconds_per_step.items()}
    print(f"\n{'variant':14s} {'ms/step':>8s} {'tokens/s':>9s} {'vs nanoGPT':>11s} {'vs 13,000 tok/s':>16s}")
    for name in names:
        rate = tokens_per_step / median[name]
        print(f"{name:14s} {median[name] * 1000:8.1f} {rate:9,.0f} {median['nanoGPT'] / median[name]:10.2f}x "
              f"{rate / NANOGPT_TOKENS_PER_SECOND:15.2f}x")
    ratio = median["nanoGPT"] / median["gen"]
    print(f"\ngen (defaults) runs {ratio:.2f}x nanoGPT's step measured here, "
          f"{tokens_per_step / median['gen'] / NANOGPT_TOKENS_PER_SECOND:.2f}x the issue's 13,000 tokens/s "
          f"(target {TARGET_RATIO}x)")


if __name__ == "__main__":
    main()
