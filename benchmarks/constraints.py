"""Structured generation: validity, cost and compile time, side by side in one run.

    .venv/bin/python benchmarks/constraints.py [--seeds 200] [--repeats 3]

Models: gen's quick GPT shape (4 layers, 4 heads, 128 wide, block 64) with random weights
(training one takes longer than this benchmark is meant to; a random model is the harder case
for a constraint, since it never wants to write JSON), exported to ONNX, over
- the byte tokenizer (256 tokens: the char model's 65 characters hold no braces or quotes), and
- a 50,257-token byte-level BPE vocabulary (GPT-2's size; merges of random pairs), where the
  mask over the vocabulary is the expensive part.

Validity: for --seeds seeds, each output of a JSON Schema constraint (an object with a string,
an integer in a range, an enum and an array) that completed validates with jsonschema, each
regex output re.fullmatch-es its pattern, and each grammar output matches the grammar's
language. Cost: tokens/s of constrained decode against the same decode unconstrained, at batch
1 and batch 32, on both vocabularies (the regex `[a-z ]+`; rows x decode steps per second, as a
constrained row may end early by its rule). Compile: the schema's compile time.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import numpy as np
import torch

from gen.core.constraints import Constraint
from gen.core.generation import generate_text
from gen.core.sampling import Sampling
from gen.core.tokenizer import tokenizer_to_dict
from gen.export.onnx_export import ExportOptions, export_model
from gen.plugins.gpt import GPT
from gen.plugins.tokenizers import BPETokenizer, ByteTokenizer
from gen.runtime.onnx_model import OnnxModel

QUICK = dict(block_size=64, n_layer=4, n_head=4, n_embd=128)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,6}$"}, "maxItems": 3},
    },
    "required": ["name", "age", "kind", "tags"],
    "additionalProperties": False,
}
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
GRAMMAR = 'start: answer " " NUMBER\nanswer: "yes" | "no" | "maybe"\nNUMBER: /[1-9][0-9]{0,2}/\n'
GRAMMAR_LANGUAGE = r"(yes|no|maybe) [1-9][0-9]{0,2}"


def gpt2_sized_bpe(vocab_size: int = 50_257, seed: int = 0) -> BPETokenizer:
    """A byte-level BPE tokenizer of GPT-2's vocabulary size whose merges join random earlier tokens,
    mostly ASCII letters, so that its tokens are multi-byte pieces as a trained vocabulary's are."""
    rng = np.random.default_rng(seed)
    letters = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz ,.{}\":0123456789"]
    merges: dict[tuple[int, int], None] = {}  # each pair once, in order
    while len(merges) < vocab_size - 256:
        first = int(rng.choice(letters)) if rng.random() < 0.3 else int(rng.integers(97, 256 + len(merges)))
        merges.setdefault((first, int(rng.choice(letters))))
    return BPETokenizer(list(merges))


def export(tokenizer, name: str, folder: Path) -> OnnxModel:
    torch.manual_seed(0)
    model = GPT.from_config(dict(QUICK, vocab_size=tokenizer.vocab_size)).eval()
    path = folder / f"{name}.onnx"
    export_model(model, path, tokenizer_document=tokenizer_to_dict(name, tokenizer),
                 options=ExportOptions(verify=False, progress=None))
    return OnnxModel(path)


def validity(model: OnnxModel, seeds: int) -> list[tuple[str, int, int, int]]:
    """(kind, valid, complete, seeds) for the schema, the regex and the grammar."""
    checks = [
        ("json_schema", Constraint("json_schema", json.dumps(SCHEMA)), 100,
         lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None),
        ("regex", Constraint("regex", DATE), 20, lambda text: re.fullmatch(DATE, text) is not None),
        ("grammar", Constraint("grammar", GRAMMAR), 20, lambda text: re.fullmatch(GRAMMAR_LANGUAGE, text) is not None),
    ]
    rows = []
    for kind, constraint, max_tokens, valid in checks:
        good = complete = 0
        for seed in range(seeds):
            tokens = list(model.tokens("\n", seed=seed, max_new_tokens=max_tokens, constraint=constraint, logprobs=0))
            text = "".join(token.text for token in tokens)
            if len(tokens) < max_tokens or _is_whole(kind, text):
                complete += 1
                try:
                    good += bool(valid(text))
                except (ValueError, jsonschema.ValidationError):
                    pass
        rows.append((kind, good, complete, seeds))
    return rows


def _is_whole(kind: str, text: str) -> bool:
    return kind != "json_schema" or text.endswith("}")


def tokens_per_second(model: OnnxModel, batch: int, new_tokens: int, constrained: bool, repeats: int) -> float:
    """Rows x decode steps per second: a constrained row may end before new_tokens (by its
    ending rule), so what is counted is the steps the batch really ran."""
    constraint = Constraint("regex", "[a-z ]+").compile(model.tokenizer, model.vocab_size) if constrained else None
    sampling = Sampling.of("top_k:k=40")
    best = 0.0
    for repeat in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        steps = generate_text(model, model.tokenizer, ["\n"] * batch, sampling.new(), np.random.default_rng(repeat),
                              new_tokens, constraint=constraint)
        count = sum(1 for _ in steps) - 1  # the last step only flushes the text held back
        if repeat:
            best = max(best, batch * count / (time.perf_counter() - started))
    return best


def compile_ms(model: OnnxModel, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        Constraint("json_schema", json.dumps(SCHEMA)).compile(model.tokenizer, model.vocab_size)
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=60)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        byte = export(ByteTokenizer(), "byte", Path(folder))
        started = time.perf_counter()
        bpe_tokenizer = gpt2_sized_bpe()
        bpe = export(bpe_tokenizer, "bpe", Path(folder))
        print(f"models ready ({time.perf_counter() - started:.1f} s for the 50,257-token one)", file=sys.stderr)

        print(f"validity over {arguments.seeds} seeds (byte tokenizer, random weights):")
        print(f"{'constraint':<12} {'valid / completed':>18} {'completed':>10}")
        for kind, good, complete, seeds in validity(byte, arguments.seeds):
            print(f"{kind:<12} {f'{good} / {complete}':>18} {f'{complete}/{seeds}':>10}")

        print(f"\ndecode, tokens/s (top_k:k=40, {arguments.new_tokens} tokens per row, best of {arguments.repeats}):")
        print(f"{'vocabulary':<16} {'batch':>5} {'free':>9} {'constrained':>12} {'ratio':>7}")
        for name, model in (("byte (256)", byte), (f"bpe ({bpe.vocab_size:,})", bpe)):
            for batch in (1, 32):
                free = tokens_per_second(model, batch, arguments.new_tokens, False, arguments.repeats)
                constrained = tokens_per_second(model, batch, arguments.new_tokens, True, arguments.repeats)
                print(f"{name:<16} {batch:>5} {free:>9,.0f} {constrained:>12,.0f} {constrained / free:>7.0%}")

        print("\ncompile time of the schema (best of 5; the vocabulary's token view is built once per tokenizer):")
        for name, model in (("byte (256)", byte), (f"bpe ({bpe.vocab_size:,})", bpe)):
            print(f"{name:<16} {compile_ms(model):8.2f} ms")


if __name__ == "__main__":
    main()
