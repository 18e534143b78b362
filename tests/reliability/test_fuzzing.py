"""Fuzzing the readers of text and files that come from users and other people: the spec
parser, the tokenizer loaders, the checkpoint config loader and the ONNX metadata
reader may raise GenError and nothing else, whatever they are given."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.core import GenError
from gen.core.training.checkpoint import build_model, read_config
from gen.core.sampling import build_sampler_chain
from gen.core.specs import parse_spec
from gen.core.tokenizer import tokenizer_from_dict
from gen.runtime.artifact import read_artifact

fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
spec_text = st.text(alphabet=st.sampled_from(list("top_kp:=,.0123456789-e ngramiax/\\\x00é")), max_size=30) \
    | st.text(max_size=30)


def only_gen_errors(call, *args):
    try:
        call(*args)
    except GenError as error:
        assert "\n" not in str(error)


@fuzz
@given(spec=spec_text)
def test_the_spec_parser_raises_only_gen_errors(spec):
    only_gen_errors(parse_spec, spec, "sampler")
    only_gen_errors(build_sampler_chain, [spec])


@fuzz
@given(name=st.sampled_from(["char", "byte", "bpe", "nonesuch"]) | st.text(max_size=8), state=json_values)
def test_the_tokenizer_loaders_raise_only_gen_errors(name, state):
    only_gen_errors(tokenizer_from_dict, {"name": name, "state": state})
    only_gen_errors(tokenizer_from_dict, json.dumps({"name": name, "state": state}))


@fuzz
@given(state=st.fixed_dictionaries({"merges": st.lists(st.lists(st.integers(-3, 400), max_size=3), max_size=60)}))
def test_the_bpe_loader_raises_only_gen_errors_on_merge_lists(state):
    only_gen_errors(tokenizer_from_dict, {"name": "bpe", "state": state})


@fuzz
@given(document=json_values | st.fixed_dictionaries({
    "format": st.just("gen.checkpoint"), "format_version": json_values,
    "model": st.fixed_dictionaries({"name": st.sampled_from(["gpt", "bigram", "x"]), "config": json_values}),
    "tokenizer": json_values, "step": json_values, "train_args": json_values}))
def test_the_checkpoint_config_loader_raises_only_gen_errors(tmp_path, document):
    (tmp_path / "config.json").write_text(json.dumps(document))
    only_gen_errors(read_config, tmp_path)


@fuzz
@given(name=st.sampled_from(["gpt", "bigram"]), config=st.dictionaries(
    st.sampled_from(["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "other"]),
    st.integers(-5, 2**40) | st.floats(allow_nan=True) | st.booleans() | st.text(max_size=3), max_size=6))
def test_building_a_model_from_any_config_raises_only_gen_errors(name, config):
    only_gen_errors(build_model, name, config)


@pytest.fixture(scope="module")
def export_bytes(workspace):
    return (workspace / "model.onnx").read_bytes()


@fuzz
@given(data=st.binary(max_size=200))
def test_the_onnx_reader_raises_only_gen_errors_on_any_bytes(tmp_path, data):
    (tmp_path / "model.onnx").write_bytes(data)
    only_gen_errors(read_artifact, tmp_path / "model.onnx")


@fuzz
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=5))
def test_the_onnx_reader_raises_only_gen_errors_on_damaged_exports(tmp_path, export_bytes, cut, flips):
    data = bytearray(export_bytes[:cut % (len(export_bytes) + 1)])
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    only_gen_errors(read_artifact, tmp_path / "model.onnx")


@fuzz
@given(model=json_values, tokenizer=json_values, version=st.text(max_size=4))
def test_the_onnx_metadata_reader_raises_only_gen_errors_on_any_metadata(tmp_path, workspace, model, tokenizer,
                                                                         version):
    import onnx

    proto = onnx.load(str(workspace / "model.onnx"))
    del proto.metadata_props[:]
    for key, value in (("gen.format", version), ("gen.model", json.dumps(model)),
                       ("gen.tokenizer", json.dumps(tokenizer))):
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp_path / "model.onnx"))
    try:
        artifact = read_artifact(tmp_path / "model.onnx")
    except GenError:
        return
    only_gen_errors(tokenizer_from_dict, artifact.tokenizer)
