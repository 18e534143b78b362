"""`gen export --gguf FILE`: gen's `gpt` model as a GGUF file that llama.cpp runs.

gen's `gpt` is GPT-2's architecture, so the file is a `gpt2`-architecture GGUF, laid
out as llama.cpp's own converter (convert_hf_to_gguf.py, GPT2Model) writes a GPT-2:

    token_embd.weight      wte (vocab, C)            position_embd.weight  wpe (block, C)
    blk.{i}.attn_norm      ln_1 weight, bias         blk.{i}.attn_qkv      c_attn (3C, C), bias
    blk.{i}.attn_output    attn.c_proj (C, C), bias  blk.{i}.ffn_norm      ln_2 weight, bias
    blk.{i}.ffn_up         c_fc (4C, C), bias        blk.{i}.ffn_down      mlp.c_proj (C, 4C), bias
    output_norm            ln_f weight, bias

Shapes are numpy's (rows, columns), torch.nn.Linear's (out, in): the converter
transposes GPT-2's Conv1D weights into this layout, and gen's Linear weights are
already in it. llama.cpp's gpt2 graph needs every bias, so a model trained without
biases gets zeros (which compute the same, as `gen export --hf` does). The head is tied
to the embedding, so no `output.weight` is written: llama.cpp then uses token_embd.

Tensor types: f32; f16; q8_0 and q4_0 (blocks of 32 along each row, quantized by the
gguf package). As llama.cpp's converter does, one-dimensional tensors (norms, biases)
stay f32 in every type, and so does the position embedding.

The vocabulary is llama.cpp's GPT-2 byte-level BPE (`tokenizer.ggml.model` "gpt2"):
each token is written as the UTF-8 bytes of its text in GPT-2's printable stand-ins
(gen.core.training.hf.byte_to_unicode). gen's char tokenizer becomes one token per
character (with the merges that join the bytes of a character beyond ASCII), byte
the 256 bytes, bpe the bytes and its merges in rank order (pre-tokenized with GPT-2's
pattern, as gen's bpe is). llama.cpp requires a merges list, so a vocabulary without
merges gets one that can never apply (its two halves are not characters).
A model vocabulary larger than the tokenizer's is padded with unused tokens.

What llama.cpp computes differently from gen, said here rather than hidden: llama.cpp's
gpt2 graph applies the tanh approximation of GELU, which is gpt's `activation=gelu_tanh`
(GPT-2's own); a model with gpt's default exact GELU is written too, and the export says
that llama.cpp approximates its activation (the two differ by up to about 1e-3 per
activation; greedy ids agreed on the models measured in benchmarks/vs_llamacpp.py).
gen's char, byte and bpe tokenizers have no end-of-text token, and llama.cpp then takes
id 11 as its end of generation for a gpt2 vocabulary: `llama-cli` stops where the model
writes that token.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from gen.core.errors import GenError

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which gpt uses
# A merge whose halves are never characters of a text: it never applies (see the docstring).
UNUSABLE_MERGE = "[gen-no-merges] [gen-no-merges]"


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GenError("gen export --gguf needs the gguf package: pip install 'gen[gguf]'") from None
    return gguf


def gguf_tensor_names(n_layer: int) -> dict[str, str]:
    """gen gpt's state-dict key -> the GGUF tensor name, for every tensor written."""
    names = {
        "transformer.wte.weight": "token_embd.weight",
        "transformer.wpe.weight": "position_embd.weight",
        "transformer.ln_f.weight": "output_norm.weight",
        "transformer.ln_f.bias": "output_norm.bias",
    }
    per_layer = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
                 "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(n_layer):
        for gen_name, gguf_name in per_layer.items():
            for kind in ("weight", "bias"):
                names[f"transformer.h.{i}.{gen_name}.{kind}"] = f"blk.{i}.{gguf_name}.{kind}"
    return names


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The GGUF name -> float32 array of each tensor of a gen gpt, biases as zeros where it has none."""
    import torch

    state = model.state_dict()
    tensors = {}
    for key, name in gguf_tensor_names(model.config.n_layer).items():
        if key in state:
            tensors[name] = state[key].detach().float().cpu().numpy().copy()
            continue
        # A missing bias: as many zeros as its weight has rows (a LayerNorm's weight is 1-D).
        weight = state[key.removesuffix(".bias") + ".weight"]
        tensors[name] = torch.zeros(weight.shape[0]).numpy()
    return tensors


def gguf_vocabulary(tokenizer_document: dict, vocab_size: int) -> tuple[list[str], list[int], list[str], str]:
    """(tokens, token types, merges, pre-tokenizer) of a gen tokenizer as llama.cpp's GPT-2 vocabulary."""
    from gen.core.tokenizer import tokenizer_from_dict
    from gen.core.training.hf import byte_to_unicode

    gguf = _gguf()
    name = tokenizer_document["name"]
    if name not in ("char", "byte", "bpe"):
        raise GenError(f"gen export --gguf writes char, byte and bpe tokenizers as a GPT-2 vocabulary, not {name!r}")
    tokenizer = tokenizer_from_dict(tokenizer_document)
    as_unicode = byte_to_unicode()

    def spelled(text_bytes: bytes) -> str:
        return "".join(as_unicode[b] for b in text_bytes)

    merges: list[str] = []
    if name == "char":
        tokens = []
        for character in tokenizer.characters:
            pieces = [spelled(bytes([b])) for b in character.encode("utf-8")]
            # A character of several bytes is merged from them, left to right, as llama.cpp's BPE does.
            for end in range(2, len(pieces) + 1):
                merge = f"{''.join(pieces[:end - 1])} {pieces[end - 1]}"
                if merge not in merges:
                    merges.append(merge)
            tokens.append("".join(pieces))
    else:
        tokens = [spelled(bytes([b])) for b in range(256)]
        for first, second in getattr(tokenizer, "merges", []):
            merges.append(f"{tokens[first]} {tokens[second]}")
            tokens.append(tokens[first] + tokens[second])
    if len(tokens) != tokenizer.vocab_size:
        raise GenError(f"the {name} tokenizer has {tokenizer.vocab_size} tokens but spells {len(tokens)}")
    if len(set(tokens)) != len(tokens):
        raise GenError(f"the {name} tokenizer has two tokens of the same text; llama.cpp's vocabulary cannot hold "
                       f"both")
    if vocab_size < len(tokens):
        raise GenError(f"the tokenizer has {len(tokens)} tokens, the model's embedding {vocab_size} rows")
    types = [gguf.TokenType.NORMAL] * len(tokens)
    padding = vocab_size - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types += [gguf.TokenType.UNUSED] * padding
    return tokens, [int(kind) for kind in types], merges or [UNUSABLE_MERGE], "gpt-2"


def _stored(gguf, name: str, array: np.ndarray, gguf_type: str):
    """(data, raw dtype or None) of one tensor as written in a file of `gguf_type`."""
    if array.ndim == 1 or name == "position_embd.weight" or gguf_type == "f32":
        return array.astype(np.float32), None
    if gguf_type == "f16":
        return array.astype(np.float16), None
    quantization = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[gguf_type]
    try:
        return gguf.quants.quantize(array.astype(np.float32), quantization), quantization
    except Exception as error:  # the gguf package's own errors (a row not a multiple of 32, a missing kernel)
        raise GenError(f"the gguf package cannot write {name} {list(array.shape)} as {gguf_type}: {error}") from None


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def export_gguf(checkpoint: str | os.PathLike, path: str | os.PathLike, *, gguf_type: str = "f32",
                overwrite: bool = False, say: Callable[[str], None] = print) -> Path:
    """Write the gen gpt checkpoint `checkpoint` as a gpt2 GGUF file of `gguf_type` at `path`."""
    from gen.core.training.checkpoint import load_checkpoint

    path = Path(path)
    if path.exists() and not overwrite:
        raise GenError(f"{str(path)!r} already exists; give another --gguf file, or --overwrite to replace it")
    loaded = load_checkpoint(checkpoint)
    return write_gguf(loaded.model, loaded.tokenizer_document, path, gguf_type=gguf_type, name=loaded.path.name,
                      say=say, source=f"{str(loaded.path)!r} holds {loaded.model_name!r}")


def write_gguf(model, tokenizer_document: dict, path: str | os.PathLike, *, gguf_type: str = "f32",
               name: str = "gen", say: Callable[[str], None] | None = print, source: str = "") -> Path:
    """Write `model` (a gen gpt, in torch) with its tokenizer as a gpt2 GGUF file of `gguf_type` at `path`,
    atomically (replacing what is there)."""
    from gen.core.files import replace_file_atomically

    gguf = _gguf()
    if gguf_type not in GGUF_TYPES:
        raise GenError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    # gen's own GPT declares its fused graph in its class body; a subclass may compute something else.
    if vars(type(model)).get("fused_graph") != "gpt":
        raise GenError(f"gen export --gguf writes gen's gpt model as llama.cpp's gpt2; "
                       f"{source or 'the model is ' + repr(type(model).__name__)}")
    path = Path(path)
    config = model.config
    tokens, types, merges, pre = gguf_vocabulary(tokenizer_document, config.vocab_size)
    tensors = gguf_tensors(model)
    with replace_file_atomically(path) as temporary:
        writer = gguf.GGUFWriter(str(temporary), "gpt2")
        writer.add_name(name)
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(LAYER_NORM_EPSILON)
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[gguf_type]))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_add_bos_token(False)  # gen's prompts start with their own first token
        for tensor_name, array in tensors.items():
            data, raw_dtype = _stored(gguf, tensor_name, array, gguf_type)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    if say is not None:
        say(f"wrote {path}: llama.cpp gpt2 GGUF, {gguf_type} ({path.stat().st_size / 1e6:.2f} MB), "
            f"{len(tensors)} tensors, {tokenizer_document['name']} tokenizer as a {len(tokens)}-token GPT-2 "
            f"byte-level vocabulary")
        if getattr(config, "activation", "gelu") != "gelu_tanh":
            say("note: llama.cpp's gpt2 computes GELU's tanh approximation and this model the exact GELU, so its "
                "logits there differ slightly (about 1e-3); train with --model gpt:activation=gelu_tanh for an "
                "exact match")
    return path
