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


# --- the one door (gen.core.reading) ----------------------------------------------------

json_like_text = st.text(alphabet=st.sampled_from(list('[]{}",:0123456789-.eE truefalsn\\\x00é\n')), max_size=300)


@fuzz
@given(text=json_like_text | st.text(max_size=200), depth=st.integers(0, 300), digits=st.integers(0, 6000))
def test_the_json_door_raises_only_gen_errors(text, depth, digits):
    from gen.core.reading import parse_json

    only_gen_errors(parse_json, text, "a document")
    only_gen_errors(parse_json, "[" * depth + text + "]" * depth, "a document")
    only_gen_errors(parse_json, "{\"a\": " + "1" * max(digits, 1) + "}", "a document")


@fuzz
@given(data=st.binary(max_size=300) | json_like_text.map(str.encode), kind=st.sampled_from(
    ["TOML config", "checkpoint config", "metrics log", "tokenizer"]))
def test_the_file_door_raises_only_gen_errors_on_any_bytes(tmp_path, data, kind):
    from gen.core.reading import json_lines, load_json, load_toml

    path = tmp_path / "file"
    path.write_bytes(data)
    only_gen_errors(load_toml, path)
    only_gen_errors(load_json, path, kind)
    only_gen_errors(lambda: list(json_lines(path, "metrics log")))


@fuzz
@given(document=json_values)
def test_the_typed_checks_raise_only_gen_errors(document):
    from gen.core.cli.plot import Evaluation
    from gen.core.reading import validate
    from gen.core.training.checkpoint import _CheckpointConfig, _ParamGroup

    for schema in (Evaluation, _CheckpointConfig, _ParamGroup):
        only_gen_errors(validate, document, schema, "a document")


@fuzz
@given(data=st.binary(max_size=400), declared=st.integers(0, 2**40))
def test_the_npy_and_zip_checks_raise_only_gen_errors(tmp_path, data, declared):
    import io
    import zipfile

    import numpy as np

    from gen.core.reading import check_npy_header, check_zip_members

    path = tmp_path / "file"
    path.write_bytes(data)
    only_gen_errors(check_npy_header, path, "token cache")
    only_gen_errors(check_zip_members, path, "nanoGPT checkpoint")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<u2", "fortran_order": False, "shape": (declared,)})
    path.write_bytes(header.getvalue() + data)
    only_gen_errors(check_npy_header, path, "token cache")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data.pkl", data * 50)
    only_gen_errors(check_zip_members, path, "nanoGPT checkpoint")
