"""`gen export --genai DIR`: an export that onnxruntime-genai loads as it is.

onnxruntime-genai (`pip install 'gen[genai]'`) runs decoder-only ONNX models with
its own generation loop and KV cache management. It reads a folder with the model
and a `genai_config.json` describing the graph; gen's export already has the input
and output names it expects (`input_ids`, `attention_mask`,
`past_key_values.%d.key/value`, `logits`, `present.%d.key/value`) and computes
positions from the attention mask, so the config only names them and gives the
sizes. It declares the generic "decoder" model type and no position_ids input.

What stays gen's: the tokenizer (encode a prompt with gen's, hand onnxruntime-genai
the ids, decode the ids it returns with gen's) and the policy past the context
window: onnxruntime-genai generates at most `context_length` (block_size) tokens in
all, prompt included, where `gen run` slides its window and goes on. gen models
have no end-of-text token, so the config names none and generation runs to the
length asked for. Within the window, greedy search gives the token ids of
`gen run --sampler greedy` (tests/test_genai.py checks 200 of them).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from gen.core.errors import GenError
from gen.core.files import replace_directory_atomically
from gen.runtime.artifact import ATTENTION_MASK, INPUT_IDS, LOGITS, read_artifact

CONFIG_FILE = "genai_config.json"
MODEL_FILE = "model.onnx"


def genai_config(model: dict) -> dict:
    """The genai_config.json of an export, from its gen.model metadata."""
    return {
        "model": {
            "type": "decoder",  # onnxruntime-genai's generic decoder-only model
            "context_length": model["block_size"],
            "vocab_size": model["vocab_size"],
            "eos_token_id": [],  # none: a gen model has no end-of-text token
            "pad_token_id": 0,  # left padding of a batch; masked out by attention_mask
            "decoder": {
                "filename": MODEL_FILE,
                "num_hidden_layers": model["n_layer"],
                "num_attention_heads": model["n_head"],
                "num_key_value_heads": model["n_head"],
                "head_size": model["head_size"],
                "hidden_size": model["n_head"] * model["head_size"],
                "inputs": {
                    "input_ids": INPUT_IDS,
                    "attention_mask": ATTENTION_MASK,
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": LOGITS,
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "max_length": model["block_size"],
            "do_sample": False,
            "num_beams": 1,
            # The graph concatenates past and new keys; it does not write into a
            # preallocated buffer of max_length, so the cache is not shared.
            "past_present_share_buffer": False,
        },
    }


def export_genai(
    checkpoint,
    directory: str | os.PathLike,
    *,
    opset: int | None = None,
    quantize: str | None = None,
    verify: bool = True,
    progress: Callable[[str], None] | None = print,
):
    """Export `checkpoint` to DIRECTORY/model.onnx with DIRECTORY/genai_config.json, atomically."""
    from gen.export.onnx_export import export_onnx

    say = progress or (lambda message: None)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise GenError(f"--genai {str(directory)!r} is a file; give a directory")
    with replace_directory_atomically(directory) as temporary:
        # The export's messages name the file where it will be, not the temporary folder.
        result = export_onnx(checkpoint, temporary / MODEL_FILE, opset=opset, quantize=quantize, verify=verify,
                             progress=lambda message: say(message.replace(str(temporary), str(directory))))
        model = read_artifact(temporary / MODEL_FILE).model
        if not model["n_layer"]:
            raise GenError(
                f"onnxruntime-genai runs models with a KV cache; the {model['name']} model has none "
                f"(export it without --genai for gen run)"
            )
        (temporary / CONFIG_FILE).write_text(json.dumps(genai_config(model), indent=2) + "\n", encoding="utf-8")
    result.path = directory / MODEL_FILE
    say(f"wrote {directory}/ for onnxruntime-genai: {MODEL_FILE} and {CONFIG_FILE} "
        f"(context {model['block_size']} tokens; tokenize with gen)")
    return result
