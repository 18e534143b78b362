"""What `gen export --attention` costs a decode step, beside the default export, in one run.

    .venv/bin/python benchmarks/attention_outputs.py [--rounds 5] [--tokens 300]

The same random-weight gpt of nanoGPT's CPU shape (4 layers, 4 heads, 128 wide, block 64)
is exported twice, without and with the attention outputs. Both files generate the same
text greedily (checked), in interleaved rounds (default, attention, default, ...), one
onnxruntime thread each; each figure is the best round, because other processes on a small
machine only slow a run down. Then the cost of one `OnnxModel.attention` call over a whole
window, what the playground's panel asks for per click. The load average is printed beside
the figures: on a shared machine they move with it.

onnxruntime runs every node of the graph at each step, whichever outputs are asked for,
so the attention export pays for its weights at every decode step: that is why they are
an option and not in the default export.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from gen.core.tokenizer import tokenizer_to_dict
from gen.export.onnx_export import ExportOptions, export_model
from gen.plugins.gpt import GPT
from gen.plugins.tokenizers import CharTokenizer
from gen.runtime.onnx_model import OnnxModel

SHAPE = dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east.\n"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=300)
    arguments = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(TEXT)
    model = GPT.from_config(dict(SHAPE, vocab_size=tokenizer.vocab_size)).eval()
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: Path(folder) / f"{name}.onnx" for name in ("default", "attention")}
        for name, path in paths.items():
            export_model(model, path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                         options=ExportOptions(attention=name == "attention", verify=False, progress=None))
        models = {name: OnnxModel(path) for name, path in paths.items()}
        texts = {name: m.generate(["ROMEO:"], sampler="greedy", max_new_tokens=arguments.tokens)[0]
                 for name, m in models.items()}
        assert texts["default"] == texts["attention"], "the two exports generate different text"
        best = {name: 0.0 for name in models}
        print(f"greedy, batch 1, {arguments.tokens} tokens, best of {arguments.rounds} interleaved rounds "
              f"({load()} before)")
        for _ in range(arguments.rounds):
            for name, m in models.items():
                started = time.perf_counter()
                m.generate(["ROMEO:"], sampler="greedy", max_new_tokens=arguments.tokens)
                best[name] = max(best[name], arguments.tokens / (time.perf_counter() - started))
        for name, speed in best.items():
            print(f"  {name:9} export: {speed:8,.0f} tokens/s")
        print(f"  attention / default: {best['attention'] / best['default']:.3f}  ({load()} after)")
        ids = tokenizer.encode((TEXT * 2)[:SHAPE["block_size"]])
        calls = []
        for _ in range(20):
            started = time.perf_counter()
            models["attention"].attention(ids)
            calls.append(time.perf_counter() - started)
        print(f"OnnxModel.attention over a window of {len(ids)} tokens: {min(calls) * 1e3:.2f} ms (best of 20; "
              f"{load()})")


if __name__ == "__main__":
    main()
