"""GPT-2 checkpoints in and out: `gen import hf DIR` and `gen export --hf DIR`.

A Hugging Face GPT-2 (`GPT2LMHeadModel`, model_type "gpt2") is the model that gen's
`gpt` plugin implements, weight for weight, with three differences of form:
- GPT-2 stores its linear layers as `Conv1D`, whose weight is the transpose of a
  `torch.nn.Linear`'s: `c_attn`, `c_proj` and `c_fc` are transposed on the way in
  and on the way out, as nanoGPT's `from_pretrained` does;
- a base-model file names the weights without the `transformer.` prefix, and older
  files carry the attention-mask buffers `attn.bias` / `attn.masked_bias`;
- the head is tied to the input embedding and usually not stored at all.
The block size is `n_positions`; GPT-2 always has biases, so an import has
`bias=True` and an export of a gen model without biases writes zeros, which
compute the same.

What the `gpt` model cannot compute exactly is refused in one line naming the
config.json field, never approximated: `activation_function` is GPT-2's own
"gelu_new" (or its other name "gelu_pytorch_tanh"), the tanh approximation, which
gpt computes as activation "gelu_tanh", or the exact "gelu"; the layer norms are
torch's default eps 1e-5; attention is scaled by 1/sqrt(head size) and nothing
else; the MLP is 4 * n_embd wide; the head is the embedding.

Reading runs no code: config.json and the tokenizer files go through
gen.core.reading; `model.safetensors` holds only tensors by its format, and a
`pytorch_model.bin` is read by `torch.load(weights_only=True)` alone (see
gen.core.training.nanogpt.torch_load_weights_only). The vocabulary becomes gen's `hf`
tokenizer: the folder's `tokenizer.json`, or one built with the tokenizers package
from GPT-2's `vocab.json` + `merges.txt`.

The other way, the tokenizer.json is the `hf` tokenizer's own document, or one built
with the tokenizers package that encodes as gen's char, byte or bpe tokenizer does.

torch and tokenizers are imported when a conversion runs, not with this module.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from gen.core.errors import GenError, first_line
from gen.core.reading import SIZE_LIMITS, load_json, read_text

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which gpt uses
HF_FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
END_OF_TEXT = "<|endoftext|>"
# config.json's activation_function -> gpt's activation, and back (GPT-2's name first).
ACTIVATIONS_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
ACTIVATIONS_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu"}

# config.json fields that change what GPT-2 computes, with the value gpt computes (None: absent is fine).
EXACTLY = {
    "layer_norm_epsilon": LAYER_NORM_EPSILON,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


# --- Hugging Face -> gen ---------------------------------------------------------------


def _size(hf_config: dict, key: str, path, *fallbacks: str) -> int:
    for name in (key, *fallbacks):
        value = hf_config.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise GenError(f"{path}: {name} is {value!r}, not a whole number")
            return value
    raise GenError(f"{path} has no {key!r}; is it a GPT-2 config.json?")


def gpt_config_from_hf(hf_config, path) -> dict:
    """gen's gpt config for the GPT-2 config.json `hf_config`, or a GenError naming the
    field that gpt cannot compute exactly."""
    if not isinstance(hf_config, dict) or hf_config.get("model_type") != "gpt2":
        model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
        raise GenError(f"{path}: model_type is {model_type!r}; gen imports the GPT-2 family (model_type \"gpt2\")")
    activation = hf_config.get("activation_function", "gelu_new")  # GPT2Config's default
    if activation not in ACTIVATIONS_FROM_HF:
        raise GenError(f"{path}: activation_function is {activation!r}; gen's gpt computes "
                       f"{', '.join(map(repr, ACTIVATIONS_FROM_HF))} only and does not approximate another")
    for field, computed in EXACTLY.items():
        value = hf_config.get(field, computed)
        if value != computed:
            raise GenError(f"{path}: {field} is {value!r}; gen's gpt computes {field} = {computed!r} only")
    config = {"vocab_size": _size(hf_config, "vocab_size", path),
              "block_size": _size(hf_config, "n_positions", path, "n_ctx"),
              "n_layer": _size(hf_config, "n_layer", path),
              "n_head": _size(hf_config, "n_head", path),
              "n_embd": _size(hf_config, "n_embd", path),
              "bias": True, "dropout": 0.0, "activation": ACTIVATIONS_FROM_HF[activation]}
    inner = hf_config.get("n_inner")
    if inner is not None and inner != 4 * config["n_embd"]:
        raise GenError(f"{path}: n_inner is {inner!r}; gen's gpt has an MLP of 4 * n_embd = {4 * config['n_embd']}")
    return config


def read_hf_weights(folder: Path) -> dict:
    """The tensors of model.safetensors, or of pytorch_model.bin read with weights_only=True."""
    import torch

    safetensors_file, torch_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(safetensors_file))
        except (SafetensorError, OSError, ValueError) as error:
            raise GenError(f"cannot read {safetensors_file} ({first_line(error)})") from None
    elif torch_file.exists():
        from gen.core.training.nanogpt import torch_load_weights_only

        tensors = torch_load_weights_only(torch_file, "Hugging Face weights file")
    else:
        raise GenError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise GenError(f"{folder}: its weights file is not a dictionary of tensors")
    return tensors


def gpt_weights_from_hf(tensors: dict, path) -> dict:
    """GPT-2's tensors under gen's keys: the `transformer.` prefix, Linear layout, float32."""
    weights = {}
    for key, tensor in tensors.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # attention-mask buffers of older files
            continue
        key = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if key.endswith(CONV1D_WEIGHTS):
            if tensor.dim() != 2:
                raise GenError(f"{path}: {key} has shape {tuple(tensor.shape)}, not a matrix")
            tensor = tensor.t()
        weights[key] = tensor.float().contiguous()
    embedding = weights.get("transformer.wte.weight")
    head = weights.setdefault("lm_head.weight", embedding)
    if head is not None and embedding is not None and not head.equal(embedding):
        raise GenError(f"{path}: lm_head differs from transformer.wte; gen's gpt ties them (tie_word_embeddings)")
    return weights


def hf_tokenizer_document(folder: Path) -> dict:
    """The folder's tokenizer.json, or one built from GPT-2's vocab.json and merges.txt."""
    tokenizer_file, vocab_file, merges_file = folder / "tokenizer.json", folder / "vocab.json", folder / "merges.txt"
    if tokenizer_file.exists():
        document = load_json(tokenizer_file, "tokenizer")
        if not isinstance(document, dict) or "model" not in document:
            raise GenError(f"{tokenizer_file} is not a Hugging Face tokenizer.json (it has no \"model\")")
        return document
    if not (vocab_file.exists() and merges_file.exists()):
        raise GenError(f"{folder} holds no tokenizer: give a folder with tokenizer.json, or vocab.json and merges.txt")
    vocabulary = load_json(vocab_file, "tokenizer")
    if not isinstance(vocabulary, dict) or not all(isinstance(i, int) for i in vocabulary.values()):
        raise GenError(f"{vocab_file} is not a vocabulary (token -> id)")
    merges = []
    for number, line in enumerate(read_text(merges_file, "tokenizer", SIZE_LIMITS["tokenizer"]).splitlines(), 1):
        if line.startswith("#version") or not line.strip():
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise GenError(f"{merges_file}: line {number} is not a merge of two tokens ({line[:40]!r})")
        merges.append(tuple(pair))
    tokenizers = _tokenizers()
    try:
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocabulary, merges=merges))
    except Exception as error:
        raise GenError(f"{folder}: the tokenizers package cannot build GPT-2's tokenizer from vocab.json and "
                       f"merges.txt ({first_line(error)})") from None
    return _byte_level_document(tokenizer, use_regex=True, special=[END_OF_TEXT] if END_OF_TEXT in vocabulary else [])


def import_hf(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """Write the Hugging Face GPT-2 folder `folder` as a gen checkpoint directory at `out`."""
    from gen.core.files import check_replaceable_folder
    from gen.core.tokenizer import tokenizer_from_dict
    from gen.core.training.checkpoint import CHECKPOINT_FILES, save_checkpoint
    from gen.core.training.nanogpt import gpt_from_weights

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise GenError(f"{folder} is not a folder; give a Hugging Face model folder (config.json, model.safetensors)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise GenError(f"{str(out)!r} already exists; give another --out, or --overwrite to replace it")
    check_replaceable_folder(out, CHECKPOINT_FILES, "--out")

    config_file = folder / "config.json"
    if not config_file.exists():
        raise GenError(f"{folder} has no config.json; give a Hugging Face model folder")
    config = gpt_config_from_hf(load_json(config_file, "checkpoint config"), config_file)
    tokenizer_document = {"name": "hf", "state": {"tokenizer": hf_tokenizer_document(folder)}}
    vocabulary = tokenizer_from_dict(tokenizer_document)
    if vocabulary.vocab_size > config["vocab_size"]:
        raise GenError(f"{folder}: the tokenizer has {vocabulary.vocab_size:,} tokens but the embedding only "
                       f"{config['vocab_size']:,} rows; the tokenizer is not this model's")
    weights = gpt_weights_from_hf(read_hf_weights(folder), folder)
    model = gpt_from_weights(config, weights, f"{folder}: the weights do not fit its config.json")
    save_checkpoint(out, model=model, model_name="gpt", tokenizer_document=tokenizer_document,
                    train_args={"data": data}, step=0,
                    source={"format": "hf", "path": str(folder), "name_or_path": str(folder.resolve())})
    parameters = sum(p.numel() for p in model.parameters())
    say(f"wrote {out}: GPT-2 as gen's gpt ({parameters:,} parameters, {config['n_layer']} layers, "
        f"block {config['block_size']}), hf tokenizer of {vocabulary.vocab_size:,} tokens")
    return out


# --- gen -> Hugging Face ---------------------------------------------------------------


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise GenError("GPT-2 folders need the tokenizers package: pip install 'gen[hf]'") from None
    return tokenizers


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet of byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _byte_level_document(tokenizer, *, use_regex: bool, special: list[str] = ()) -> dict:
    """`tokenizer` with GPT-2's byte-level pre-tokenizer and decoder, as a tokenizer.json document."""
    tokenizers = _tokenizers()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    if special:
        tokenizer.add_special_tokens(list(special))
    return json.loads(tokenizer.to_str())


def tokenizer_json_for(tokenizer_document: dict) -> dict:
    """A tokenizer.json that encodes as the gen tokenizer `tokenizer_document` does."""
    from gen.core.tokenizer import tokenizer_from_dict

    name, state = tokenizer_document["name"], tokenizer_document["state"]
    if name == "hf":
        return state["tokenizer"]
    if name not in ("char", "byte", "bpe"):
        raise GenError(f"gen export --hf writes char, byte, bpe and hf tokenizers as tokenizer.json, not {name!r}")
    tokenizers = _tokenizers()
    gen_tokenizer = tokenizer_from_dict(tokenizer_document)
    if name == "char":
        # One token per character and no merges; Fuse joins decoded characters without spaces.
        vocabulary = {character: i for i, character in enumerate(gen_tokenizer.characters)}
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocabulary, merges=[]))
        tokenizer.decoder = tokenizers.decoders.Fuse()
        return json.loads(tokenizer.to_str())
    as_unicode = byte_to_unicode()
    vocabulary = {as_unicode[b]: b for b in range(256)}
    merges = []
    if name == "bpe":
        spelled = [as_unicode[b] for b in range(256)]
        for first, second in gen_tokenizer.merges:
            spelled.append(spelled[first] + spelled[second])
            vocabulary[spelled[-1]] = len(spelled) - 1
            merges.append((spelled[first], spelled[second]))
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocabulary, merges=merges))
    # bpe cuts text at GPT-2's pattern before merging, as gen's bpe does; byte merges nothing.
    return _byte_level_document(tokenizer, use_regex=name == "bpe")


def hf_config_for(model_config: dict, eos_token_id: int | None) -> dict:
    """The GPT-2 config.json of gen's gpt `model_config`."""
    dropout = model_config.get("dropout", 0.0)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": model_config["vocab_size"], "n_positions": model_config["block_size"],
        "n_embd": model_config["n_embd"], "n_layer": model_config["n_layer"], "n_head": model_config["n_head"],
        "n_inner": None,
        "activation_function": ACTIVATIONS_TO_HF[model_config.get("activation", "gelu")],  # older checkpoints: exact
        "layer_norm_epsilon": LAYER_NORM_EPSILON,
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }


def hf_tensors_from_gpt(model) -> dict:
    """gpt's weights as GPT2LMHeadModel stores them: Conv1D layout, biases (zeros where gpt has
    none), no lm_head (tied: transformers takes it from wte, as its save_pretrained leaves it)."""
    import torch

    tensors = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        tensor = tensor.detach().float().cpu()
        tensors[key] = (tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor).contiguous().clone()
    for module_name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module_name != "lm_head" \
                and f"{module_name}.bias" not in tensors:
            rows = module.out_features if isinstance(module, torch.nn.Linear) else module.normalized_shape[0]
            tensors[f"{module_name}.bias"] = torch.zeros(rows)
    return tensors


def export_hf(checkpoint: str | os.PathLike, folder: str | os.PathLike, *, overwrite: bool = False,
              chat_template: str | None = None, say: Callable[[str], None] = print) -> Path:
    """Write the gen gpt checkpoint `checkpoint` as a Hugging Face GPT-2 folder at `folder`."""
    from safetensors.torch import save_file

    from gen.core.files import check_replaceable_folder, replace_directory_atomically
    from gen.core.training.checkpoint import load_checkpoint

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise GenError(f"{str(folder)!r} already exists; give another --hf folder, or --overwrite to replace it")
    check_replaceable_folder(folder, HF_FOLDER_FILES, "--hf")
    loaded = load_checkpoint(checkpoint)
    # gen's own GPT declares its fused graph in its class body; a subclass may compute something else.
    if vars(type(loaded.model)).get("fused_graph") != "gpt":
        raise GenError(f"gen export --hf writes gen's gpt model as GPT-2; {str(loaded.path)!r} holds "
                       f"{loaded.model_name!r}")
    tokenizer_json = tokenizer_json_for(loaded.tokenizer_document)
    end_of_text = next((token.get("id") for token in tokenizer_json.get("added_tokens") or []
                        if isinstance(token, dict) and token.get("content") == END_OF_TEXT), None)
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": loaded.model_config["block_size"]}
    if end_of_text is not None:
        tokenizer_config.update(bos_token=END_OF_TEXT, eos_token=END_OF_TEXT)
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    with replace_directory_atomically(folder) as directory:
        (directory / "config.json").write_text(
            json.dumps(hf_config_for(loaded.model_config, end_of_text), indent=2) + "\n", encoding="utf-8")
        save_file(hf_tensors_from_gpt(loaded.model), str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n",
                                                         encoding="utf-8")
    say(f"wrote {folder}: GPT-2 config.json, model.safetensors and tokenizer.json "
        f"({loaded.tokenizer_document['name']} tokenizer) for transformers")
    return folder
