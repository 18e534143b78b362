"""The cache contract's two kinds (gen.core.model.cache_kind), a state's metadata as the
runtime checks it, and the export's padding check for a model without a cache.

The recurrent model itself (training, export, gen run, batches, the scheduler) is tested
with examples/gen-gru, a third-party plugin.
"""
import json

import onnx
import pytest
import torch

from gen.core.errors import GenError
from gen.core.model import cache_kind, has_kv_cache
from gen.core.tokenizer import tokenizer_to_dict
from gen.export.onnx_export import ExportOptions, export_model
from gen.plugins.bigram import BigramLanguageModel
from gen.plugins.gpt import GPT
from gen.runtime.artifact import read_artifact


class WithState(torch.nn.Module):
    def forward_cached(self, input_ids, attention_mask, state): ...

    def empty_state(self, batch_size, device=None): ...


class WithBoth(WithState):
    def empty_past(self, batch_size, device=None): ...


def test_cache_kind_tells_a_kv_cache_a_state_and_none():
    gpt = GPT.from_config(dict(block_size=8, n_layer=1, n_head=2, n_embd=8, vocab_size=5))
    assert cache_kind(gpt) == "kv" and has_kv_cache(gpt)
    assert cache_kind(WithState()) == "state" and not has_kv_cache(WithState())
    assert cache_kind(BigramLanguageModel.from_config(dict(block_size=8, vocab_size=5))) is None
    with pytest.raises(GenError, match="defines both empty_past .* and empty_state"):
        cache_kind(WithBoth())


def with_model_metadata(source, target, **changes):
    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key == "gen.model":
            entry.value = json.dumps({**json.loads(entry.value), **changes})
    onnx.save(proto, str(target))
    return target


@pytest.mark.parametrize("changes", [
    {"cache": "state", "state": {"h": [4]}},  # a KV export (n_layer > 0) cannot also have a state
    {"cache": "state", "n_layer": 0, "state": {"h": [0]}},
    {"cache": "state", "n_layer": 0, "state": {"h": [2**30]}},
    {"cache": "state", "n_layer": 0, "state": {"no/slash": [4]}},
    {"cache": "state", "n_layer": 0, "state": {}},
    {"cache": "other", "n_layer": 0, "state": {"h": [4]}},
])
def test_malformed_state_metadata_is_refused_in_one_line(small_gpt_onnx, tmp_path, changes):
    altered = with_model_metadata(small_gpt_onnx, tmp_path / "altered.onnx", **changes)
    with pytest.raises(GenError, match="metadata with a malformed state") as raised:
        read_artifact(altered)
    assert "\n" not in str(raised.value)


def test_a_state_the_graph_does_not_have_is_refused_before_anything_runs(small_gpt_onnx, tmp_path):
    from gen.runtime import OnnxModel

    altered = with_model_metadata(small_gpt_onnx, tmp_path / "altered.onnx", cache="state", n_layer=0,
                                  n_head=0, head_size=0, state={"h": [4]})
    with pytest.raises(GenError, match="the graph lacks past_state.h, present_state.h, the graph also has "
                                       "past_key_values.0.key"):
        OnnxModel(altered)


class FirstTokenBefore(torch.nn.Module):
    """A model without a cache that looks one token back and, before the first, sees the first
    token again: left padding (token 0) changes what the first real token sees."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.table = torch.nn.Embedding(vocab_size, vocab_size)

    def config_dict(self):
        return {"vocab_size": self.vocab_size, "block_size": 12}

    def forward(self, idx, targets=None):
        previous = torch.cat([idx[:, :1], idx[:, :-1]], dim=1)
        return self.table(idx) + 0.5 * self.table(previous), None


def test_export_refuses_a_model_whose_padded_rows_differ_from_the_rows_alone(tokenizer, tmp_path):
    torch.manual_seed(0)
    with pytest.raises(GenError) as raised:
        export_model(FirstTokenBefore(tokenizer.vocab_size), tmp_path / "first.onnx", model_name="first",
                     tokenizer_document=tokenizer_to_dict("char", tokenizer), options=ExportOptions(progress=None))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("export refused: row 1 of a left-padded batch (batch 3, length 7, 2 padding tokens) "
                              "gives logits ")
    assert "the model ignores attention_mask" in message and "honour attention_mask" in message
    assert not (tmp_path / "first.onnx").exists()
