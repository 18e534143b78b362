"""`gen export`: the ONNX file's contract, its parity with torch, quantization, third-party models.

Every test runs real onnxruntime sessions on small models exported once per module.
"""
import json
import re
import types

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner

from gen.core import hookimpl
from gen.core.training.checkpoint import save_checkpoint
from gen.core.cli import GenGroup
from gen.core.errors import GenError
from gen.core.registry import get_plugins
from gen.core.tokenizer import tokenizer_from_dict, tokenizer_to_dict
from gen.core.cli.export_commands import export
from gen.export.attention import TRANSLATIONS
from gen.export.onnx_export import ExportOptions, _quiet_exporter, export_model
from gen.export.verify import verify_export
from gen.plugins.bigram import BigramLanguageModel
from gen.plugins.gpt import GPT

from gen.runtime.artifact import FORMAT_VERSION, past_names, present_names
from gen.runtime.onnx_model import OnnxModel

BLOCK_SIZE = 16  # conftest's small GPT
GPT_CONFIG = dict(block_size=BLOCK_SIZE, n_layer=2, n_head=2, n_embd=32)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gpt_export(gpt, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    messages = []
    result = export_model(
        gpt, folder / "model.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
        options=ExportOptions(progress=messages.append),
    )
    return result, messages


@pytest.fixture(scope="module")
def session(gpt_export):
    result, _ = gpt_export
    return onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])


def left_padded_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, :min(3 * row, length - 1)] = 0
    return mask


def run_both(model, session, batch, length, past_length, seed=0):
    """Logits from onnxruntime and from torch's forward_cached for the same inputs."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, past_length + length), generator=generator)
    mask = left_padded_mask(batch, past_length + length)
    with torch.no_grad():
        past = model.empty_past(batch)
        if past_length:
            _, past = model.forward_cached(ids[:, :past_length], mask[:, :past_length], past)
        expected, presents = model.forward_cached(ids[:, past_length:], mask, past)
    feed = {"input_ids": ids[:, past_length:].numpy(), "attention_mask": mask.numpy()}
    feed.update(zip(past_names(model.config.n_layer), (t.numpy() for pair in past for t in pair)))
    outputs = session.run(None, feed)
    return outputs, expected, presents


# --- the file -------------------------------------------------------------------------


def test_export_writes_one_checked_file_with_the_gen_metadata(gpt_export, tokenizer):
    result, messages = gpt_export
    assert sorted(path.name for path in result.path.parent.iterdir()) == ["model.onnx"]  # no .data sidecar
    proto = onnx.load(str(result.path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)

    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert int(metadata["gen.format"]) == FORMAT_VERSION
    model = json.loads(metadata["gen.model"])
    assert model["name"] == "gpt"
    assert model["config"]["n_embd"] == 32
    assert (model["block_size"], model["n_layer"], model["n_head"], model["head_size"]) == (BLOCK_SIZE, 2, 2, 16)
    rebuilt = tokenizer_from_dict(metadata["gen.tokenizer"])
    assert rebuilt.decode(rebuilt.encode("ROMEO: Hello!")) == "ROMEO: Hello!"
    assert rebuilt.to_dict() == tokenizer.to_dict()

    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert list(inputs) == ["input_ids", "attention_mask", *past_names(2)]
    assert list(outputs) == ["logits", *present_names(2)]
    assert inputs["input_ids"] == ["batch", "sequence"]
    assert inputs["past_key_values.0.key"] == ["batch", 2, "past_sequence", 16]
    assert outputs["logits"][0::2] == ["batch", tokenizer.vocab_size]

    # The export showed its steps and verified itself.
    assert any(message.startswith("[1/4]") for message in messages)
    assert any("verified: max abs logits difference" in message for message in messages)
    assert result.max_logits_diff is not None and result.max_logits_diff <= 1e-4


# Batch 1 and 3, prompt lengths 1, 7 and block_size, without a past and with one that
# fills the rest of the context (a full-length prompt leaves no room for a past).
PARITY_CASES = [
    (batch, length, past_length)
    for batch in (1, 3)
    for length in (1, 7, BLOCK_SIZE)
    for past_length in sorted({0, BLOCK_SIZE - length})
]


@pytest.mark.parametrize("batch, length, past_length", PARITY_CASES)
def test_logits_and_cache_match_torch(gpt, session, batch, length, past_length):
    outputs, expected, presents = run_both(gpt, session, batch, length, past_length)
    assert outputs[0].shape == (batch, length, gpt.config.vocab_size)
    assert np.abs(outputs[0] - expected.numpy()).max() <= 1e-4
    for got, want in zip(outputs[1:], [t for pair in presents for t in pair]):
        assert got.shape == (batch, gpt.config.n_head, past_length + length, 16)
        assert np.abs(got - want.numpy()).max() <= 1e-4


def test_prefill_with_a_zero_length_past_matches_the_training_forward(gpt, session):
    ids = torch.randint(0, gpt.config.vocab_size, (4, 11), generator=torch.Generator().manual_seed(3))
    empty = {name: np.zeros((4, 2, 0, 16), np.float32) for name in past_names(2)}
    outputs = session.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones((4, 11), np.int64), **empty})
    with torch.no_grad():
        expected, _ = gpt(ids)  # plain causal forward, no cache involved
    assert np.abs(outputs[0] - expected.numpy()).max() <= 1e-4
    assert outputs[1].shape == (4, 2, 11, 16)


def test_the_graph_runs_at_any_batch_size(gpt, session):
    for batch in (1, 2, 5, 32):
        outputs, expected, _ = run_both(gpt, session, batch, 3, 4, seed=batch)
        assert np.abs(outputs[0] - expected.numpy()).max() <= 1e-4


def test_verification_fails_loudly_when_the_file_does_not_match_the_model(gpt_export, tokenizer, make_gpt):
    result, _ = gpt_export
    other = make_gpt(tokenizer.vocab_size, seed=1)
    with pytest.raises(GenError, match=r"verification failed: batch 1, length 1.*> 0.0001"):
        verify_export(other, result.path, progress=None)


class Attention(torch.nn.Module):
    """scaled_dot_product_attention in each of the forms gen's translation handles."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form

    def forward(self, query, key, value, bias):
        attend = torch.nn.functional.scaled_dot_product_attention
        if self.form == "causal":  # top-left aligned, as torch defines it
            return attend(query, key, value, is_causal=True)
        if self.form == "boolean mask":
            # Every query sees key 0: a row with no key visible is the one case where the
            # translation differs from torch (documented in gen.export.attention).
            first_key = torch.arange(key.size(2)) == 0
            return attend(query, key, value, attn_mask=(bias > 0) | first_key)
        if self.form == "float mask, scale":
            return attend(query, key, value, attn_mask=bias, scale=0.3)
        return attend(query, key, value)


@pytest.mark.parametrize("form", ["causal", "boolean mask", "float mask, scale", "no mask"])
def test_the_attention_translation_matches_torch_at_any_lengths(form):
    queries, keys = torch.export.Dim("queries"), torch.export.Dim("keys")
    generator = torch.Generator().manual_seed(0)

    def tensors(query_length, key_length):
        shapes = [(2, 3, query_length, 8), (2, 3, key_length, 8), (2, 3, key_length, 8), (2, 1, query_length, key_length)]
        return tuple(torch.randn(shape, generator=generator) for shape in shapes)

    with _quiet_exporter():
        program = torch.onnx.export(
            Attention(form), tensors(5, 7), dynamo=True, verbose=False, input_names=["q", "k", "v", "bias"],
            dynamic_shapes=({2: queries}, {2: keys}, {2: keys}, {2: queries, 3: keys}),
            custom_translation_table=TRANSLATIONS,
        )
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert "IsNaN" not in {node.op_type for node in program.model_proto.graph.node}
    for query_length, key_length in [(5, 7), (1, 9), (4, 4)]:
        inputs = tensors(query_length, key_length)
        feed = {name: tensor.numpy() for name, tensor in zip(["q", "k", "v", "bias"], inputs) if name in names}
        expected = Attention(form)(*inputs).numpy()
        assert np.abs(session.run(None, feed)[0] - expected).max() <= 1e-5


# --- bigram, quantization, options --------------------------------------------------------


def test_bigram_exports_with_the_mask_as_an_input_and_matches_torch(tokenizer, tmp_path):
    torch.manual_seed(0)
    bigram = BigramLanguageModel.from_config({"vocab_size": tokenizer.vocab_size, "block_size": 8}).eval()
    result = export_model(
        bigram, tmp_path / "bigram.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
        options=ExportOptions(progress=None),
    )
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    model = json.loads(session.get_modelmeta().custom_metadata_map["gen.model"])
    assert (model["name"], model["block_size"], model["n_layer"]) == ("bigram", 8, 0)
    ids = np.random.default_rng(0).integers(0, tokenizer.vocab_size, (3, 8))
    logits = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    with torch.no_grad():
        expected, _ = bigram(torch.from_numpy(ids))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-6)


def test_int8_quantization_shrinks_the_file_and_reports_the_loss_it_costs(gpt, tokenizer, text, tmp_path):
    messages = []
    result = export_model(
        gpt, tmp_path / "int8.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
        options=ExportOptions(quantize="int8", verify=False, progress=messages.append),
        validation_ids=tokenizer.encode(text[-3000:]), validation_source="the test text",
    )
    report = result.quantized
    assert report["int8_bytes"] < report["fp32_bytes"] / 1.5  # ~3.5x on bigger models, where weights dominate
    assert result.size_bytes == report["int8_bytes"]
    assert report["validation_tokens"] == 2999
    assert abs(report["int8_loss"] - report["fp32_loss"]) < 0.5  # a small change, not a broken model
    assert any("validation loss on 2,999 tokens of the test text" in message for message in messages)
    proto = onnx.load(str(result.path))
    assert "MatMulInteger" in {node.op_type for node in proto.graph.node}
    assert {"gen.format", "gen.model", "gen.tokenizer"} <= {entry.key for entry in proto.metadata_props}


def test_an_opset_the_exporter_cannot_reach_is_a_clear_error(gpt, tokenizer, tmp_path):
    document = tokenizer_to_dict("char", tokenizer)
    with pytest.raises(GenError, match="cannot export at opset 17: .* use --opset 18 or newer"):
        export_model(gpt, tmp_path / "old.onnx", tokenizer_document=document,
                     options=ExportOptions(opset=17, progress=None))
    with pytest.raises(GenError, match="cannot export at opset 99: .*could not convert this model to it"):
        export_model(gpt, tmp_path / "new.onnx", tokenizer_document=document,
                     options=ExportOptions(opset=99, progress=None))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_another_supported_opset_is_written_and_verified(gpt, tokenizer, tmp_path):
    result = export_model(
        gpt, tmp_path / "m.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
        options=ExportOptions(opset=18, progress=None),
    )
    assert result.opset == 18
    assert {entry.domain: entry.version for entry in onnx.load(str(result.path)).opset_import}[""] == 18
    assert result.max_logits_diff <= 1e-4


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tokenizer, tmp_path):
    small = GPT.from_config(dict(GPT_CONFIG, vocab_size=10))
    with pytest.raises(GenError, match="the tokenizer has 59 tokens but the model only 10"):
        export_model(small, tmp_path / "x.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer))


# --- `gen export` -----------------------------------------------------------------------------


@pytest.fixture
def checkpoint_with_data(gpt, tokenizer, text, tmp_path, monkeypatch):
    """A checkpoint whose training arguments name a corpus file that is at hand."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # load_dataset caches token files there
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text[:50_000], encoding="utf-8")
    return save_checkpoint(
        tmp_path / "run" / "best", model=gpt, model_name="gpt",
        tokenizer_document=tokenizer_to_dict("char", tokenizer), train_args={"data": str(corpus)}, step=10,
    )


def export_cli(*arguments):
    return CliRunner().invoke(GenGroup(commands=[export]), ["export", *map(str, arguments)])


def test_gen_export_int8_from_a_run_directory_reports_size_and_validation_loss(checkpoint_with_data, tmp_path):
    output = tmp_path / "out" / "model.int8.onnx"
    result = export_cli(output, "--checkpoint", checkpoint_with_data.parent, "--quantize", "int8")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"loaded checkpoint {checkpoint_with_data} (gpt, step 10)"  # the run directory's best/
    assert any(line.startswith("[4/4] verifying onnxruntime against torch") for line in lines)
    assert any("verified: max abs logits difference" in line for line in lines)
    assert any(re.search(r"size: fp32 [\d.]+ MB -> int8 [\d.]+ MB", line) for line in lines)
    # 10% of 50,000 characters is the validation split: 5,000 tokens, 4,999 scored.
    assert any(re.search(r"validation loss on 4,999 tokens of the validation split of '.*corpus.txt': "
                         r"fp32 [\d.]+, int8 [\d.]+ \([+-][\d.]+ nats/token", line) for line in lines)
    assert lines[-1] == f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB); run it with: gen run {output}"
    assert sorted(path.name for path in output.parent.iterdir()) == ["model.int8.onnx"]  # no leftovers


def test_gen_export_says_when_the_validation_loss_cannot_be_measured(checkpoint_with_data, tmp_path):
    (tmp_path / "corpus.txt").unlink()
    result = export_cli(tmp_path / "m.onnx", "--checkpoint", checkpoint_with_data, "--quantize", "int8", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "[4/4] verification skipped (--no-verify)" in result.output
    assert "validation loss not measured: the training data" in result.output
    assert "is not available" in result.output


def test_gen_export_without_a_checkpoint_is_a_one_line_error(tmp_path):
    result = export_cli(tmp_path / "m.onnx", "--checkpoint", tmp_path / "nothing")
    assert result.exit_code == 1
    assert result.output.startswith("Error: no checkpoint at")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


# --- a third-party model takes part through the documented methods ------------------------


class PreviousTwoTokens(torch.nn.Module):
    """A third-party model without a cache: logits from the sum of the last two token embeddings."""

    def __init__(self, vocab_size: int, block_size: int):
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.table = torch.nn.Embedding(vocab_size, vocab_size)

    def config_dict(self):
        return {"vocab_size": self.vocab_size, "block_size": self.block_size}

    def forward(self, idx, targets=None):
        # Token 0 before the first (gen.core.model's contract: what batches are left-padded with).
        previous = torch.cat([torch.zeros_like(idx[:, :1]), idx[:, :-1]], dim=1)
        return self.table(idx) + 0.5 * self.table(previous), None


@hookimpl
def register_models(register):
    register("previous_two", PreviousTwoTokens)


@pytest.fixture
def third_party_model(fresh_plugins):
    plugin = types.ModuleType("gen_previous_two")  # what an installed plugin module would be
    plugin.register_models = register_models
    get_plugins().register(plugin, "gen-previous-two")


def test_a_third_party_model_without_a_cache_exports_through_forward(third_party_model, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = PreviousTwoTokens(tokenizer.vocab_size, block_size=12).eval()
    result = export_model(model, tmp_path / "p2.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
                          options=ExportOptions(progress=None))
    assert result.max_logits_diff <= 1e-4
    metadata = onnx.load(str(result.path)).metadata_props
    assert json.loads({e.key: e.value for e in metadata}["gen.model"])["name"] == "previous_two"


def test_a_third_party_model_with_a_cache_exports_its_kv_inputs(tokenizer, tmp_path):
    class WrappedGPT(torch.nn.Module):
        """Only the documented methods, delegating to a GPT: forward_cached, empty_past, config_dict."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def config_dict(self):
            return self.inner.config_dict()

        def forward(self, idx, targets=None):
            return self.inner(idx, targets)

        def forward_cached(self, input_ids, attention_mask, past_key_values):
            return self.inner.forward_cached(input_ids, attention_mask, past_key_values)

        def empty_past(self, batch_size, device=None):
            return self.inner.empty_past(batch_size, device)

    model = WrappedGPT(GPT.from_config(dict(block_size=8, n_layer=1, n_head=4, n_embd=16, vocab_size=tokenizer.vocab_size)))
    result = export_model(
        model, tmp_path / "wrapped.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
        model_name="wrapped", options=ExportOptions(progress=None),
    )
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][2:] == past_names(1)
    assert session.get_inputs()[2].shape == ["batch", 4, "past_sequence", 4]
    assert result.max_logits_diff <= 1e-4


def test_an_unregistered_model_needs_a_name(tokenizer, tmp_path):
    model = PreviousTwoTokens(tokenizer.vocab_size, block_size=4)
    with pytest.raises(GenError, match="PreviousTwoTokens is not a registered gen model"):
        export_model(model, tmp_path / "x.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer))


# --- graph variants: fused (the default for gpt), portable, fixed-capacity cache, int4 ------


@pytest.fixture(scope="module")
def variants(gpt, tokenizer, tmp_path_factory):
    """The small GPT exported four ways, each verified against torch (int4: not verifiable)."""
    folder = tmp_path_factory.mktemp("variants")
    document = tokenizer_to_dict("char", tokenizer)
    options = {"fused": ExportOptions(progress=None), "portable": ExportOptions(portable=True, progress=None),
               "static": ExportOptions(static_cache=True, progress=None)}
    paths = {}
    for name, how in options.items():
        result = export_model(gpt, folder / f"{name}.onnx", tokenizer_document=document, options=how)
        assert result.max_logits_diff <= 1e-4
        paths[name] = result.path
    return paths


def node_kinds(path) -> dict:
    proto = onnx.load(str(path))
    return {"count": len(proto.graph.node), "domains": {node.domain for node in proto.graph.node},
            "ops": {node.op_type for node in proto.graph.node},
            "inputs": [i.name for i in proto.graph.input]}


def test_gpt_exports_a_fused_graph_with_fewer_operators_and_portable_on_request(variants):
    fused, portable = node_kinds(variants["fused"]), node_kinds(variants["portable"])
    assert {"MultiHeadAttention", "SkipLayerNormalization"} <= fused["ops"] and "com.microsoft" in fused["domains"]
    assert portable["domains"] <= {"", "ai.onnx"}  # standard operators only, for any ONNX runtime
    assert fused["count"] < portable["count"] * 0.6
    assert fused["inputs"] == portable["inputs"]  # the same contract: input_ids, attention_mask, past_key_values.*


def test_every_graph_variant_generates_the_same_text(variants):
    generators = {name: OnnxModel(path) for name, path in variants.items()}
    prompts = ["ROMEO:", "\n", "What, ho! Who is there?"]
    for sampler, seed in (("greedy", None), ("top_k:k=5", 3)):
        texts = {name: generator.generate(prompts, sampler=sampler, seed=seed, max_new_tokens=3 * BLOCK_SIZE)
                 for name, generator in generators.items()}
        assert texts["fused"] == texts["portable"] == texts["static"], sampler
    # A batch of prompts of different lengths on the fixed-capacity cache equals each alone.
    static = generators["static"]
    alone = [static.generate([prompt], sampler="greedy", max_new_tokens=40)[0] for prompt in prompts]
    assert static.generate(prompts, sampler="greedy", max_new_tokens=40) == alone


def test_the_fixed_capacity_cache_is_declared_and_updated_in_place(variants):
    from gen.runtime.artifact import read_artifact

    kinds = node_kinds(variants["static"])
    assert "cache_position" in kinds["inputs"] and "GroupQueryAttention" in kinds["ops"]
    assert not {"MultiHeadAttention", "Split", "ScatterElements"} & kinds["ops"]
    assert read_artifact(variants["static"]).cache_capacity == BLOCK_SIZE
    generator = OnnxModel(variants["static"])
    cache = generator.empty_past(1)
    buffers = [id(buffer) for buffer in cache.buffers]
    logits, after = generator.forward(np.array([[1, 2, 3]]), np.ones((1, 3), dtype=np.int64), cache)
    logits, after = generator.forward(np.array([[4]]), np.ones((1, 4), dtype=np.int64), after)
    assert after is cache and [id(buffer) for buffer in after.buffers] == buffers  # the same buffers, written into
    assert np.abs(cache.arrays(4)[0][:, :, 3]).sum() > 0 and np.abs(cache.arrays(BLOCK_SIZE)[0][:, :, 4:]).sum() == 0


def test_fixed_capacity_steps_equal_the_plain_cache_and_keep_the_logits_they_returned(variants):
    """A decode step runs on arrays bound once and copies its logits out: what one step
    returned stays as it was after the next, and every step equals the growing cache's."""
    static, plain = OnnxModel(variants["static"]), OnnxModel(variants["fused"])
    cache, past = static.empty_past(2), None
    ids, mask = np.array([[0, 1, 2], [3, 4, 5]]), np.array([[0, 1, 1], [1, 1, 1]])  # the first row left-padded
    returned = []
    for step in range(4):
        logits, cache = static.forward(ids, mask, cache)
        expected, past = plain.forward(ids, mask, past)
        assert logits.shape == expected.shape and np.abs(logits - expected).max() <= 1e-5, step
        returned.append((logits, logits.copy()))
        # Step 2 brings three tokens after the past (a batch's go one at a time), the others one.
        new = 3 if step == 1 else 1
        ids = np.array([[6 + step] * new, [9 + step] * new])
        mask = np.concatenate([mask, np.ones((2, new), dtype=np.int64)], 1)
    assert all(np.array_equal(logits, copy) for logits, copy in returned)


def test_a_fixed_capacity_cache_needs_a_head_size_that_is_a_multiple_of_8(tokenizer, tmp_path):
    from gen.plugins.gpt import GPT

    model = GPT.from_config(dict(block_size=16, n_layer=1, n_head=8, n_embd=32, vocab_size=tokenizer.vocab_size)).eval()  # heads of 4
    with pytest.raises(GenError, match="head size .* multiple of 8 .* this model's is 4: leave out --static-cache"):
        export_model(model, tmp_path / "m.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
                     options=ExportOptions(static_cache=True, progress=None))
    assert not (tmp_path / "m.onnx").exists()


def test_a_fixed_capacity_cache_needs_the_fused_gpt_graph(gpt, tokenizer, tmp_path):
    with pytest.raises(GenError, match="fixed-capacity cache .* gpt model only, and not with --portable"):
        export_model(gpt, tmp_path / "m.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
                     options=ExportOptions(portable=True, static_cache=True, progress=None))


def test_int4_weights_shrink_the_file_and_the_loss_is_reported(gpt, tokenizer, text, tmp_path):
    messages = []
    result = export_model(
        gpt, tmp_path / "int4.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
        options=ExportOptions(quantize="int4", verify=False, progress=messages.append),
        validation_ids=tokenizer.encode(text[-3000:]), validation_source="the test text",
    )
    report = result.quantized
    assert report["int4_bytes"] < report["fp32_bytes"] / 2 and result.size_bytes == report["int4_bytes"]
    assert abs(report["int4_loss"] - report["fp32_loss"]) < 0.5
    assert any("size: fp32" in message and "-> int4" in message for message in messages)
    assert "MatMulNBits" in node_kinds(result.path)["ops"]
    assert onnx.load(str(result.path)).ir_version <= 10  # see test_files_declare_the_oldest_ir_version...
    assert len(OnnxModel(result.path).generate(["ROMEO:"], max_new_tokens=20, seed=1)[0]) == 20


def test_files_declare_the_oldest_ir_version_their_opsets_need(variants):
    # An onnxruntime a release behind the installed onnx refuses a newer IR version than
    # it knows (measured: onnx 1.23 writes IR 14, onnxruntime 1.30 reads up to 13).
    for name, path in variants.items():
        proto = onnx.load(str(path), load_external_data=False)
        needed = onnx.helper.find_min_ir_version_for(proto.opset_import, ignore_unknown=True)
        assert proto.ir_version <= max(needed, 10), (name, proto.ir_version)


def test_the_graphs_carry_no_unused_weights(variants):
    # onnxruntime warns on every session start about an initializer no node reads.
    for name, path in variants.items():
        graph = onnx.load(str(path)).graph
        read = {tensor for node in graph.node for tensor in node.input}
        assert [t.name for t in graph.initializer if t.name not in read] == [], name


def test_gpt2s_tanh_gelu_exports_both_ways_and_matches_torch(make_gpt, tokenizer, tmp_path):
    # GPT-2's own activation (gelu_new): the fused graph's Gelu takes approximate="tanh",
    # the portable graph gets it from torch's exporter; both within 1e-4 of torch.
    exact = make_gpt(tokenizer.vocab_size)
    approximate = GPT.from_config({**exact.config_dict(), "activation": "gelu_tanh"}).eval()
    approximate.load_state_dict(exact.state_dict())
    ids = torch.randint(0, tokenizer.vocab_size, (2, BLOCK_SIZE), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # the two activations differ enough for the check below to tell them apart
        assert (approximate(ids)[0] - exact(ids)[0]).abs().max().item() > 1e-3
    document = tokenizer_to_dict("char", tokenizer)
    for name, how in (("fused", ExportOptions(progress=None)), ("portable", ExportOptions(portable=True, progress=None))):
        result = export_model(approximate, tmp_path / f"{name}.onnx", tokenizer_document=document, options=how)
        assert result.max_logits_diff <= 1e-4, name
        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        outputs, expected, _ = run_both(approximate, session, batch=3, length=7, past_length=BLOCK_SIZE - 7)
        assert np.abs(outputs[0] - expected.numpy()).max() <= 1e-4, name
        metadata = {entry.key: entry.value for entry in onnx.load(str(result.path)).metadata_props}
        assert json.loads(metadata["gen.model"])["config"]["activation"] == "gelu_tanh"
    gelus = [node for node in onnx.load(str(tmp_path / "fused.onnx")).graph.node if node.op_type == "Gelu"]
    assert len(gelus) == 2 and all(onnx.helper.get_attribute_value(node.attribute[0]) == b"tanh" for node in gelus)


def test_int4_blocks_are_128_wide_where_every_weight_divides_into_them(tokenizer):
    from gen.export.gpt_graph import build_gpt_graph
    from gen.export.quantize import int4_block_size
    from gen.plugins.gpt import GPT

    def block_for(n_embd: int) -> int:
        config = dict(block_size=8, n_layer=1, n_head=1, n_embd=n_embd, vocab_size=tokenizer.vocab_size)
        return int4_block_size(build_gpt_graph(GPT.from_config(config).eval()))

    # Rows of n_embd (attention, first MLP matrix, head) and 4 x n_embd (second MLP matrix).
    assert [block_for(n_embd) for n_embd in (256, 128, 96, 32, 48, 40)] == [128, 128, 32, 32, 16, 16]


def test_a_fixed_capacity_cache_on_an_onnxruntime_before_1_22_is_refused_in_one_line(variants, monkeypatch):
    # onnxruntime 1.21 refuses GroupQueryAttention's attention bias with a many-line graph error (checked
    # with 1.21.1 installed beside the environment); gen says what to do instead, before loading.
    monkeypatch.setattr(onnxruntime, "__version__", "1.21.1")
    with pytest.raises(GenError, match=r"needs onnxruntime 1\.22 or newer .* this is 1\.21\.1: upgrade onnxruntime, "
                                       r"or export again without --static-cache"):
        OnnxModel(variants["static"])
    OnnxModel(variants["fused"])  # the plain cache's graph is for any onnxruntime gen supports
