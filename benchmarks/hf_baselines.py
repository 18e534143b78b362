"""Hugging Face's two ways to generate with a GPT-2 folder, greedy, for the benchmarks that put gen beside them
(benchmarks/large_vocab.py, benchmarks/vs_hf.py).

Each function takes a transformers folder (config.json and weights: `save_pretrained`, or gen's
`gen export --hf`), the number of threads, the prompt ids (one row, repeated `batch` times), the number of
new tokens and a dict it keeps the loaded model in between calls; it returns {"tokens/s": ..., "ids": the
first row's new ids}, or a string that says why it could not run (the package is not installed).

- `transformers_generate`: transformers' `generate` on torch, with its KV cache (use_cache), do_sample=False.
- `optimum_generate`: Optimum's ORTModelForCausalLM, the folder exported to ONNX on first use
  (export=True), on onnxruntime with `threads` intra-op threads, do_sample=False.

Optimum (the optimum-onnx package) needs transformers<4.58; install it beside gen's environment rather
than into it: `pip install --target DIR optimum-onnx`, then run the benchmark with PYTHONPATH=DIR (which
also puts the transformers it brought first on the path).
"""
from __future__ import annotations

import time
from pathlib import Path

OPTIMUM_INSTALL = "pip install --target DIR optimum-onnx, then run with PYTHONPATH=DIR"


def _timed_generate(model, prompt: list[int], batch: int, new_tokens: int) -> dict:
    import torch

    ids = torch.tensor([prompt] * batch, dtype=torch.long)  # (B, T)
    # min_new_tokens: every system makes exactly new_tokens tokens, whatever the end-of-text token does, so
    # no row finishes early and the pad id is never written; it only has to differ from the prompt's last
    # id, which transformers would take for right-padding (and warn about at every batched call).
    pad_token_id = 0 if prompt[-1] != 0 else 1
    started = time.perf_counter()
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id)
    seconds = time.perf_counter() - started
    return {"tokens/s": batch * new_tokens / seconds, "ids": output[0, len(prompt):].tolist()}


def transformers_generate(folder: Path, threads: int, prompt: list[int], batch: int, new_tokens: int,
                          cache: dict) -> dict | str:
    """tokens/s and the first row's new ids of transformers' generate (greedy, its KV cache)."""
    try:
        import torch
        from transformers import GPT2LMHeadModel
    except ImportError as error:
        return f"not installed ({error})"
    torch.set_num_threads(threads)
    if "model" not in cache:
        cache["model"] = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        return _timed_generate(cache["model"], prompt, batch, new_tokens)


def optimum_generate(folder: Path, threads: int, prompt: list[int], batch: int, new_tokens: int,
                     cache: dict) -> dict | str:
    """tokens/s and the first row's new ids of Optimum's ORTModelForCausalLM (greedy, its KV cache)."""
    try:
        import onnxruntime
        from optimum.onnxruntime import ORTModelForCausalLM
    except Exception as error:  # ImportError, or Optimum refusing the transformers it finds at import
        return f"cannot import it ({type(error).__name__}: {error}); {OPTIMUM_INSTALL}"
    if "model" not in cache:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        cache["model"] = ORTModelForCausalLM.from_pretrained(folder, export=True, session_options=options)
    return _timed_generate(cache["model"], prompt, batch, new_tokens)
