"""`gen import nanogpt CKPT.pt`: a checkpoint of Karpathy's nanoGPT as a gen checkpoint.

nanoGPT's GPT is the model that gen's `gpt` plugin implements, weight for weight:
the same module names (`transformer.wte`, `wpe`, `h.N.ln_1`, `attn.c_attn`,
`attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`, `lm_head`), the same
LayerNorm (eps 1e-5, a bias only with `bias=True`), the exact GELU, the input
embedding tied to `lm_head`. So the import renames nothing: it drops what is not a
weight (the `_orig_mod.` prefix that torch.compile adds, the causal-mask buffer
`attn.bias` of nanoGPT's non-flash attention) and loads the rest strictly into a
`gpt` of nanoGPT's `model_args`.

The vocabulary comes from nanoGPT's `meta.pkl` (`stoi`/`itos` of a character-level
dataset such as shakespeare_char) as gen's `char` tokenizer: nanoGPT takes the
sorted distinct characters of the corpus, as `char` does, so the ids are the same.
A model trained on GPT-2's tokens has no meta.pkl; give its tokenizer instead
(`--tokenizer hf:path=tokenizer.json`, GPT-2's tokenizer.json).

Nothing in either file can run code. `ckpt.pt` is read by
`torch.load(weights_only=True)`, torch's unpickler that builds tensors and plain
containers only; `meta.pkl` by `load_plain_pickle`, an unpickler that imports
nothing, so only dicts, lists, tuples, strings, numbers, booleans and None can
come out of it. A pickle runs code by naming a function or a class to call, and
that is exactly what both refuse, before anything is called.

torch is imported when an import runs, not with this module.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

from gen.core.errors import GenError, first_line
# (meta.pkl is read by gen.core.reading, and turned into a tokenizer by gen.core.shards, which
# gen train --data reads a nanoGPT data folder with too; the names stay importable from here)
from gen.core.reading import check_zip_members, load_plain_pickle
from gen.core.shards import char_tokenizer_from_meta

# nanoGPT's data/<dataset>/prepare.py downloads the corpus that gen knows by this name,
# and splits it 90/10 at the same character, so `gen eval` scores nanoGPT's validation split.
KNOWN_DATASETS = {"shakespeare_char": "shakespeare"}
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # attention masks, not weights
COMPILED_PREFIX = "_orig_mod."


def torch_load_weights_only(path: str | os.PathLike, what: str):
    """The file `path` (a torch.save zip, a `what`) read by torch.load(weights_only=True):
    tensors and plain containers only; a file naming anything else is refused unrun."""
    import torch

    check_zip_members(path, what)  # torch's format is a zip: nothing inflates past memory
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise GenError(
            f"refused to load {path}: it holds more than tensors and plain data ({first_line(error)}); "
            f"nothing in it was run"
        ) from None
    except Exception as error:  # a truncated or foreign file
        raise GenError(f"cannot read {path} as a torch checkpoint ({type(error).__name__}: {error})") from None


def load_weights_only(path: str | os.PathLike) -> dict:
    """A nanoGPT ckpt.pt, read by torch.load(weights_only=True): tensors and plain containers."""
    if not Path(path).exists():
        raise GenError(f"{path} does not exist; give the ckpt.pt that nanoGPT's train.py wrote in its out_dir")
    checkpoint = torch_load_weights_only(path, "nanoGPT checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) \
            or not isinstance(checkpoint.get("model_args"), dict):
        raise GenError(f"{path} is not a nanoGPT checkpoint: it lacks the 'model' state dict or 'model_args'")
    return checkpoint


# --- nanoGPT -> gen --------------------------------------------------------------------


def _model_config(model_args: dict, path) -> dict:
    config = {}
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value = model_args.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise GenError(f"{path}: model_args has no integer {key!r} ({value!r})")
        config[key] = value
    config["bias"] = bool(model_args.get("bias", True))  # nanoGPT's GPTConfig default
    config["dropout"] = float(model_args.get("dropout", 0.0))
    return config


def gpt_state_dict(state: dict, path) -> dict:
    """nanoGPT's state dict with gen's keys: without torch.compile's prefix and the mask buffers."""
    import torch

    weights = {}
    for key, tensor in state.items():
        key = key.removeprefix(COMPILED_PREFIX)
        if key.endswith(MASK_BUFFERS):
            continue
        if not isinstance(tensor, torch.Tensor):
            raise GenError(f"{path}: the state dict entry {key!r} is not a tensor")
        weights[key] = tensor.float()
    head, embedding = weights.get("lm_head.weight"), weights.get("transformer.wte.weight")
    if head is not None and embedding is not None and not torch.equal(head, embedding):
        raise GenError(f"{path}: lm_head and transformer.wte differ; gen's gpt ties them, as nanoGPT does")
    return weights


def _corpus_beside(meta: str | os.PathLike) -> str | None:
    """The input.txt that nanoGPT's prepare.py leaves beside meta.pkl (the text the model learned
    from, which gen eval then reads offline), or None: a dataset name would send gen eval to
    download a corpus the user may not mean, so without the file no data is recorded."""
    corpus = Path(meta).resolve().parent / "input.txt"
    return str(corpus) if corpus.is_file() else None


def gpt_from_weights(config: dict, weights: dict, misfit: str):
    """gen's gpt of `config` holding `weights` (gen's keys, every one of them), checked
    against the config before it is built; `misfit` opens the line that refuses a mismatch."""
    from gen.core.training.checkpoint import build_model

    # (lm_head is tied to wte: the model holds it once)
    stored = sum(tensor.numel() for key, tensor in weights.items() if key != "lm_head.weight")
    try:
        model = build_model("gpt", config, stored_parameters=stored)
    except GenError as error:
        raise GenError(f"{misfit} ({error})") from None
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a weight whose shape differs from the config's
        message = " ".join(str(error).split())[:300]
        raise GenError(f"{misfit} ({message})") from None
    if result.missing_keys or result.unexpected_keys:
        raise GenError(
            f"{misfit} (missing: {', '.join(result.missing_keys[:4]) or 'none'}; "
            f"unexpected: {', '.join(result.unexpected_keys[:4]) or 'none'})"
        )
    return model


def import_nanogpt(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    *,
    meta: str | os.PathLike | None = None,
    tokenizer: str | None = None,
    data: str | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """Write the nanoGPT checkpoint `ckpt` as a gen checkpoint directory at `out`."""
    from gen.core.files import check_replaceable_folder
    from gen.core.training.checkpoint import CHECKPOINT_FILES, save_checkpoint
    from gen.core.tokenizer import tokenizer_to_dict

    out = Path(out)
    if (meta is None) == (tokenizer is None):
        raise GenError("give --meta meta.pkl (the character vocabulary of a nanoGPT dataset) or --tokenizer "
                       "(e.g. hf:path=tokenizer.json for a model trained on GPT-2's tokens), one of them")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise GenError(f"{str(out)!r} already exists; give another --out, or --overwrite to replace it")
    check_replaceable_folder(out, CHECKPOINT_FILES, "--out")  # a checkpoint, never a run or other files

    checkpoint = load_weights_only(ckpt)
    step = checkpoint.get("iter_num")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise GenError(f"{ckpt}: iter_num is {step!r}, not a step (a whole number, 0 or more)")
    config = _model_config(checkpoint["model_args"], ckpt)
    nanogpt_config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    if data is None:
        data = _corpus_beside(meta) if meta is not None else KNOWN_DATASETS.get(nanogpt_config.get("dataset"))
    if meta is not None:
        vocabulary = char_tokenizer_from_meta(load_plain_pickle(meta), meta)
        tokenizer_document = tokenizer_to_dict("char", vocabulary)
    else:
        from gen.core.data import corpus_path, read_text, train_tokenizer

        text = read_text(corpus_path(data)) if data else ""  # a tokenizer read from a file needs none
        vocabulary, tokenizer_document = train_tokenizer(text, tokenizer)
    if vocabulary.vocab_size > config["vocab_size"]:
        raise GenError(f"the tokenizer has {vocabulary.vocab_size} tokens but the model only {config['vocab_size']}")

    model = gpt_from_weights(config, gpt_state_dict(checkpoint["model"], ckpt),
                             f"{ckpt}: the weights do not fit nanoGPT's GPT with its model_args")
    def plain(values: dict) -> dict:  # what JSON can hold of nanoGPT's settings
        return {key: value for key, value in values.items() if isinstance(value, (str, int, float, bool, type(None)))}

    best = checkpoint.get("best_val_loss")
    try:
        best = float(best) if best is not None else None  # nanoGPT saves a 0-d tensor
    except (TypeError, ValueError, RuntimeError):
        raise GenError(f"{ckpt}: best_val_loss is {best!r}, not a number") from None
    save_checkpoint(
        out, model=model, model_name="gpt", tokenizer_document=tokenizer_document,
        train_args={"data": data}, step=int(step) if step is not None else 0,
        best_val_loss=best, val_loss=best,
        source={"format": "nanogpt", "path": str(ckpt), "meta": str(meta) if meta else None,
                "model_args": plain(checkpoint["model_args"]), "config": plain(nanogpt_config)},
    )
    parameters = sum(p.numel() for p in model.parameters())
    say(f"wrote {out}: nanoGPT's GPT as gen's gpt ({parameters:,} parameters, {config['n_layer']} layers, "
        f"block {config['block_size']}), {tokenizer_document['name']} tokenizer of {vocabulary.vocab_size} tokens, "
        f"step {step}")
    return out
