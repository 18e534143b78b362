"""Structured generation (gen.core.constraints, gen.plugins.constraints): every kind on the torch and
onnxruntime generators (the same text for a seed), the ending rule, the one-line errors, and the
server's response_format and vLLM fields through the official openai client."""
import json
import re

import jsonschema
import numpy as np
import openai
import pytest
from click.testing import CliRunner

from conftest import SHAKESPEARE
from serve_helpers import running_server
from gen.core.cli import GenGroup
from gen.core.cli.commands import sample
from gen.core.cli.export_commands import export
from gen.core.cli.runtime_commands import run
from gen.core.constraints import Constraint
from gen.core.errors import GenError
from gen.core.tokenizer import tokenizer_to_dict
from gen.core.training.checkpoint import save_checkpoint
from gen.plugins.tokenizers import ByteTokenizer
from gen.runtime import OnnxModel
from gen.runtime.server import create_app

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]{1,6}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "kind": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,4}$"}, "maxItems": 2},
    },
    "required": ["name", "age", "kind", "tags"],
    "additionalProperties": False,
}
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
GRAMMAR = 'start: answer " " NUMBER\nanswer: "yes" | "no"\nNUMBER: /[1-9][0-9]?/\n'
GRAMMAR_LANGUAGE = r"(yes|no) [1-9][0-9]?"  # the same language, to check outputs with `re`


def cli_group():
    return GenGroup(commands=[run, export, sample])


def invoke(*arguments):
    return CliRunner().invoke(cli_group(), [str(argument) for argument in arguments])


@pytest.fixture(scope="module")
def byte_checkpoint(make_gpt, tmp_path_factory):
    """conftest's small GPT over the byte tokenizer (the char model has no `{` or `"`)."""
    return save_checkpoint(tmp_path_factory.mktemp("byte") / "checkpoint", model=make_gpt(256), model_name="gpt",
                           tokenizer_document=tokenizer_to_dict("byte", ByteTokenizer()),
                           train_args={"data": str(SHAKESPEARE)}, step=0)


@pytest.fixture(scope="module")
def byte_onnx(byte_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("byte-onnx") / "byte.onnx"
    result = invoke("export", path, "--checkpoint", byte_checkpoint)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("constraints")
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    (folder / "answer.lark").write_text(GRAMMAR)
    return folder


@pytest.mark.parametrize("kind", ["regex", "json-schema", "json-object", "grammar"])
def test_every_kind_writes_the_same_text_with_gen_sample_and_gen_run(byte_checkpoint, byte_onnx, files, kind):
    option = {"regex": ["--regex", DATE], "json-schema": ["--json-schema", files / "schema.json"],
              "json-object": ["--json-object"], "grammar": ["--grammar", files / "answer.lark"]}[kind]
    common = ["--prompt", "x", "--seed", 3, "--num-samples", 3, "--max-new-tokens", 80,
              "--sampler", "top_k:k=20", *option]
    sampled = invoke("sample", "--checkpoint", byte_checkpoint, *common)
    ran = invoke("run", byte_onnx, *common)
    assert sampled.exit_code == 0 and ran.exit_code == 0, (sampled.output, ran.output)
    assert ran.output == sampled.output
    texts = [part.removeprefix("x").removesuffix("\n") for part in ran.output.split("-" * 15 + "\n") if part]
    assert len(texts) == 3
    for text in texts:
        if kind == "regex":
            assert re.fullmatch(DATE, text)
        elif kind == "json-schema":
            jsonschema.validate(json.loads(text), SCHEMA)
        elif kind == "grammar":
            assert re.fullmatch(GRAMMAR_LANGUAGE, text)
        else:  # any object: a random model may be cut off by max_tokens, but never leaves the language
            assert text.startswith("{")


def test_constrained_texts_stay_in_their_language_for_many_seeds(byte_onnx):
    model = OnnxModel(byte_onnx)
    for seed in range(15):
        date, = model.generate(["d"], seed=seed, max_new_tokens=20, constraint=Constraint("regex", DATE))
        assert re.fullmatch(DATE, date)
        value, = model.generate(["j"], seed=seed, max_new_tokens=80,
                                constraint=Constraint("json_schema", json.dumps(SCHEMA)))
        jsonschema.validate(json.loads(value), SCHEMA)


def test_a_row_ends_when_complete_and_the_model_would_leave_the_language(byte_onnx):
    model = OnnxModel(byte_onnx)
    digits = model.generate(["n"] * 4, sampler="greedy", max_new_tokens=40, constraint=("regex", "[0-9]+"))
    tokens = list(model.tokens("n", sampler="greedy", max_new_tokens=40, constraint=("regex", "[0-9]+")))
    assert all(re.fullmatch("[0-9]+", text) for text in digits)
    assert "".join(token.text for token in tokens) == digits[0]
    assert len(tokens) < 40  # it ended by the rule, not by max_new_tokens
    # Every reported token was drawn with the other digits and letters masked out.
    assert all(alternative.sampled_logprob == -np.inf for token in tokens for alternative in token.top
               if not alternative.text.isdigit())


def test_rows_of_a_batch_keep_their_own_state_and_get_their_text_alone(byte_onnx):
    model = OnnxModel(byte_onnx)
    prompts = ["a", "bb", "ccc"]
    together = model.generate(prompts, sampler="greedy", max_new_tokens=30, constraint=("regex", DATE))
    alone = [model.generate([prompt], sampler="greedy", max_new_tokens=30, constraint=("regex", DATE))[0]
             for prompt in prompts]
    assert together == alone


def test_bad_patterns_schemas_and_grammars_are_one_line_naming_the_position(byte_onnx, files, tmp_path):
    bad_grammar = tmp_path / "bad.lark"
    bad_grammar.write_text('start: "a"\n  | foo\n')
    bad_schema = tmp_path / "bad.json"
    bad_schema.write_text('{"type": "objec"}')
    for option, expected in [(["--regex", "[0-9]{2,1}"], "invalid regular expression: at column"),
                             (["--grammar", bad_grammar], 'invalid grammar: at line 1, column 8: unknown name: "foo"'),
                             (["--json-schema", bad_schema], "invalid JSON Schema"),
                             (["--regex", "a", "--json-object"], "give one of --regex")]:
        result = invoke("run", byte_onnx, "--prompt", "x", *option)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and expected in result.output, result.output


def test_the_char_model_is_refused_json_before_generating(small_gpt_onnx):
    result = invoke("run", small_gpt_onnx, "--prompt", "x", "--json-object")
    assert result.exit_code == 1
    assert result.output.startswith("Error: constraint 'json_object' cannot be met by this model's tokenizer")
    assert result.output.count("\n") == 1


def test_a_constraint_is_given_as_a_constraint_or_a_pair():
    assert Constraint.of(("regex", "a")) == Constraint("regex", "a") == Constraint.of(Constraint("regex", "a"))
    with pytest.raises(GenError, match="a constraint is"):
        Constraint.of({"regex": "a"})


@pytest.fixture(scope="module")
def server(byte_onnx):
    model = OnnxModel(byte_onnx)
    with running_server(create_app(model, model_names=["m"], max_batch=8)) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
            yield client, model


def test_response_format_and_vllm_fields_through_the_openai_client_equal_gen_run(server):
    client, model = server
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Who?"}], max_tokens=80, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}})
    content = reply.choices[0].message.content
    jsonschema.validate(json.loads(content), SCHEMA)
    assert reply.choices[0].finish_reason == "stop"
    # Constrained and free choices of one request share the running batch, each row with its own state.
    completions = client.completions.create(model="m", prompt="d", max_tokens=20, seed=9, n=3,
                                            extra_body={"guided_regex": DATE})
    for index, choice in enumerate(completions.choices):
        assert choice.text == model.generate(["d"], seed=9 + index, max_new_tokens=20, constraint=("regex", DATE))[0]
        assert re.fullmatch(DATE, choice.text) and choice.finish_reason == "stop"
    grammar = client.completions.create(model="m", prompt="g", max_tokens=20, seed=2,
                                        extra_body={"guided_grammar": GRAMMAR})
    assert re.fullmatch(GRAMMAR_LANGUAGE, grammar.choices[0].text)
    any_object = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=10, seed=1, response_format={"type": "json_object"})
    assert any_object.choices[0].message.content.startswith("{")
    assert any_object.choices[0].finish_reason == "length"  # cut off before the object closed


def test_a_bad_constraint_is_a_400_naming_the_field(server):
    client, _ = server
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="m", prompt="x", max_tokens=5, extra_body={"guided_regex": "(a"})
    assert raised.value.body["param"] == "guided_regex"
    assert "invalid regular expression: at column 1" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert raised.value.body["param"] == "response_format"
