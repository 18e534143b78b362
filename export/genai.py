"""`gen export --genai DIR`: an export that onnxruntime-genai loads as it is.

onnxruntime-genai (`pip install 'gen[genai]'`) runs decoder-only ONNX models with
its own generation loop and KV cache management. It reads a folder with the model
and a `genai_config.json` describing the graph; gen's export already has the input
and output names it expects (`input_ids`, `attention_mask`,
`past_key_values.%d.key/value`, `logits`, `present.%d.key/value`) and computes
positions from the attention mask, so the config only names them and gives the
sizes. It declares the generic "decoder" model type and no position_ids input.

One thing does not fit as it is: onnxruntime-genai always has an end-of-sequence
token, an id inside the vocabulary (an empty `eos_token_id` list falls back to
`pad_token_id`, range-checked the same way), and stops when it is generated. gen
models have none; naming a real token would stop a character model at its first
newline. So the graph in DIR gets one more logit, id `vocab_size`, fixed at -1e30
(`add_end_token`): onnxruntime-genai's end-of-sequence token, which greedy search
never picks and sampling draws with probability 0. Generation then runs to the
length asked for, as with `gen run`. The file's gen.model metadata says
`vocab_size` + 1, its logits' width; `gen run` on it gives the same text as on a
plain export.

What stays gen's: the tokenizer (encode a prompt with gen's, hand onnxruntime-genai
the ids, decode the ids it returns with gen's) and the policy past the context
window: onnxruntime-genai generates at most `context_length` (block_size) tokens in
all, prompt included, where `gen run` slides its window and goes on. Within the
window, greedy search gives the token ids of `gen run --sampler greedy`
(tests/test_genai.py checks 200 of them).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto, helper

from gen.core.errors import GenError
from gen.core.reading import parse_json
from gen.core.files import check_replaceable_folder, check_writable_destination, replace_directory_atomically
from gen.runtime.artifact import ATTENTION_MASK, INPUT_IDS, LOGITS, MODEL_KEY

if TYPE_CHECKING:  # gen.export.onnx_export imports torch: only when export_genai runs
    from gen.export.onnx_export import ExportOptions

CONFIG_FILE = "genai_config.json"
MODEL_FILE = "model.onnx"
END_LOGIT = -1e30  # far below any real logit, and finite: softmax gives it exactly 0, never NaN


def add_end_token(path: Path) -> dict:
    """Append to the logits of the export at `path` one column fixed at END_LOGIT: a
    token id (the old vocab_size) that is never generated. Returns the file's new gen.model
    document, whose vocab_size counts that token."""
    model = onnx.load(str(path))
    graph = model.graph
    document = next(entry for entry in model.metadata_props if entry.key == MODEL_KEY)
    gen_model = parse_json(document.value, f"{path}'s {MODEL_KEY} metadata")
    end_id = gen_model["vocab_size"]
    # The node that made `logits` now makes `gen.logits`; `logits` is it with the column added.
    for node in graph.node:
        node.output[:] = ["gen.logits" if name == LOGITS else name for name in node.output]
    graph.node.extend([
        helper.make_node("Shape", ["gen.logits"], ["gen.end.shape"], end=2),  # (batch, sequence)
        helper.make_node("Constant", [], ["gen.end.one"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
        helper.make_node("Concat", ["gen.end.shape", "gen.end.one"], ["gen.end.column_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["gen.end.column_shape"], ["gen.end.column"],
                         value=helper.make_tensor("end", TensorProto.FLOAT, [1], [END_LOGIT])),
        helper.make_node("Concat", ["gen.logits", "gen.end.column"], [LOGITS], axis=-1),
    ])
    output = next(value for value in graph.output if value.name == LOGITS)
    output.type.tensor_type.shape.dim[2].dim_value = end_id + 1
    gen_model["vocab_size"] = end_id + 1
    document.value = json.dumps(gen_model, sort_keys=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return gen_model


def genai_config(model: dict) -> dict:
    """The genai_config.json of an export, from its gen.model metadata (with the end token, the last id)."""
    return {
        "model": {
            "type": "decoder",  # onnxruntime-genai's generic decoder-only model
            "context_length": model["block_size"],
            "vocab_size": model["vocab_size"],
            "eos_token_id": model["vocab_size"] - 1,  # the logit add_end_token appended: never generated
            "pad_token_id": 0,  # left padding of a batch (a real id, to embed); masked out by attention_mask
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


def export_genai(checkpoint, directory: str | os.PathLike, *, options: ExportOptions | None = None):
    """Export `checkpoint` to DIRECTORY/model.onnx with DIRECTORY/genai_config.json, atomically,
    as `options` say (static_cache excepted: onnxruntime-genai feeds the plain cache).

    An existing DIRECTORY is replaced only with `options.overwrite` (and only once the new one is whole)."""
    from gen.core.model import has_kv_cache
    from gen.export.onnx_export import ExportOptions, export_onnx, loaded_checkpoint, refuse_inside_checkpoint

    options = options or ExportOptions()
    say = options.say
    if options.static_cache:
        raise GenError("--static-cache is for gen run; onnxruntime-genai (--genai) feeds the plain "
                       "past/present cache, so leave --static-cache out")
    directory = check_writable_destination(directory, "--genai")
    if directory.exists() and not directory.is_dir():
        raise GenError(f"--genai {str(directory)!r} is a file; give a directory")
    refuse_inside_checkpoint(directory / MODEL_FILE)
    if os.path.lexists(directory) and not options.overwrite:
        raise GenError(f"--genai {str(directory)!r} already exists; give --overwrite to replace it, "
                       f"or choose another folder")
    # (a training run, or any folder with more than an earlier --genai export, is never replaced)
    check_replaceable_folder(directory, (MODEL_FILE, CONFIG_FILE), "--genai")
    checkpoint = loaded_checkpoint(checkpoint, say)
    if not has_kv_cache(checkpoint.model):
        raise GenError(
            f"onnxruntime-genai runs models with a KV cache; the {checkpoint.model_name} model has none "
            f"(export it without --genai for gen run)"
        )
    with replace_directory_atomically(directory) as temporary:
        # The file is new in the fresh temporary folder; its messages name it where it will be.
        in_temporary = dataclasses.replace(
            options, overwrite=False, progress=lambda message: say(message.replace(str(temporary), str(directory))))
        result = export_onnx(checkpoint, temporary / MODEL_FILE, options=in_temporary)
        model = add_end_token(temporary / MODEL_FILE)
        (temporary / CONFIG_FILE).write_text(json.dumps(genai_config(model), indent=2) + "\n", encoding="utf-8")
    result.path = directory / MODEL_FILE
    end_id = model["vocab_size"] - 1
    say(f"wrote {directory}/ for onnxruntime-genai: {MODEL_FILE} (with end-of-sequence id {end_id}, never "
        f"generated) and {CONFIG_FILE} (context {model['block_size']} tokens; tokenize with gen)")
    return result
