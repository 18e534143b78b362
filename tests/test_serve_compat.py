"""`gen serve` for the clients people already run: chat completions through a sandboxed chat
template (the official `openai` client), vLLM's sampling fields and tokenizer routes, prompt
scoring with echo and logprobs (lm-evaluation-harness's `local-completions`), and requests that
must be 400s, never 500s. The model is conftest's small GPT exported to ONNX (block_size 16)."""
import json
import os
from pathlib import Path

import numpy as np
import openai
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from serve_helpers import running_server
from gen.core.errors import GenError
from gen.core.scoring import token_scores
from gen.runtime.chat import DEFAULT_STOP, ChatTemplate
from gen.runtime.onnx_model import OnnxModel
from gen.runtime.server import create_app

REPOSITORY = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "Who art thou?"}]
HOSTILE_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
]


@pytest.fixture(scope="module")
def generator(small_gpt_onnx):
    return OnnxModel(small_gpt_onnx)


@pytest.fixture(scope="module")
def client(generator):
    with TestClient(create_app(generator)) as test_client:
        yield test_client


def alone(generator, prompt, specs, seed, max_tokens, stop=()):
    """What `gen run --seed SEED` prints after the prompt."""
    return generator.generate([prompt], sampler=specs, seed=seed, max_new_tokens=max_tokens, stop=stop)[0]


# --- chat completions ---------------------------------------------------------------------


def test_chat_completions_with_the_openai_client_equal_the_rendered_prompt_run_alone(generator):
    prompt = ChatTemplate().render(MESSAGES)
    assert prompt == "SYSTEM:\nSpeak verse.\n\nUSER:\nWho art thou?\n\nASSISTANT:\n"
    expected = alone(generator, prompt, ["temperature:t=0.9"], 7, 40, stop=DEFAULT_STOP)
    with running_server(create_app(generator)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        reply = client.chat.completions.create(model=os.path.basename(generator.path), messages=MESSAGES,
                                               max_tokens=40, temperature=0.9, seed=7)
        assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.prompt_tokens == len(generator.tokenizer.encode(prompt))

        chunks = list(client.chat.completions.create(messages=MESSAGES, model=os.path.basename(generator.path), max_tokens=40,
                                                     temperature=0.9, seed=7, stream=True, logprobs=True,
                                                     top_logprobs=2, stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == expected
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == \
        reply.choices[0].finish_reason
    tokens = [entry for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
              for entry in chunk.choices[0].logprobs.content]
    assert "".join(entry.token for entry in tokens) == expected[:len("".join(e.token for e in tokens))]
    assert all(len(entry.top_logprobs) == 2 for entry in tokens)
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_a_chat_template_in_the_export_is_used_and_gen_info_says_so(make_gpt, tokenizer, tmp_path, small_gpt_onnx):
    from gen.core.cli import cli
    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model

    template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    path = tmp_path / "chat.onnx"
    export_model(make_gpt(tokenizer.vocab_size), path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(verify=False, progress=None, chat_template=template))
    model = OnnxModel(path)
    assert model.artifact.chat_template == template
    with TestClient(create_app(model)) as client:
        assert client.get("/tokenizer_info").json()["chat_template"] == template
        reply = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 12, "seed": 3})
        assert reply.status_code == 200, reply.text
        # A model's own template adds no stop strings.
        assert reply.json()["choices"][0]["message"]["content"] == alone(
            model, "system: Speak verse.\nuser: Who art thou?\nassistant: ", [], 3, 12)
    info = CliRunner().invoke(cli, ["info", str(path)]).output.splitlines()
    assert [line.split()[1] for line in info if line.split()[0] == "chat"] == ["a"]
    plain = CliRunner().invoke(cli, ["info", str(small_gpt_onnx)]).output.splitlines()
    assert [line.split()[1] for line in plain if line.split()[0] == "chat"] == ["no"]


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_a_hostile_chat_template_is_refused_at_export_and_answered_400_by_a_server(
        template, generator, make_gpt, tokenizer, tmp_path):
    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model

    with pytest.raises(GenError, match="unsafe"):
        export_model(make_gpt(tokenizer.vocab_size), tmp_path / "hostile.onnx",
                     tokenizer_document=tokenizer_to_dict("char", tokenizer),
                     options=ExportOptions(verify=False, progress=None, chat_template=template))
    assert not (tmp_path / "hostile.onnx").exists()
    app = create_app(generator)
    app.state.server.chat_template = ChatTemplate(template)  # as if a file carried it, written by hand
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4})
    assert reply.status_code == 400
    assert "unsafe" in reply.json()["error"]["message"]


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts only"),
    ({"messages": MESSAGES, "echo": True}, "unknown field 'echo'"),
    ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ({"messages": MESSAGES, "logprobs": 3}, "logprobs must be true or false"),
])
def test_bad_chat_requests_are_400_naming_the_field(client, body, message):
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert message in reply.json()["error"]["message"]


# --- vLLM's sampling fields ----------------------------------------------------------------


@pytest.mark.parametrize("fields, chain", [
    ({"top_k": 5}, ["top_k:k=5"]),
    ({"top_k": -1}, []),
    ({"top_k": 0}, []),
    ({"min_p": 0.2}, ["min_p:p=0.2"]),
    ({"repetition_penalty": 1.5}, ["repetition_penalty:penalty=1.5"]),
    ({"repetition_penalty": 1}, []),
    # All together, in the documented order: the penalties, then temperature, top_k, top_p, min_p.
    ({"repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.2, "temperature": 0.8,
      "top_k": 10, "top_p": 0.9, "min_p": 0.05},
     ["repetition_penalty:penalty=1.3", "penalties:presence=0.5,frequency=0.2", "temperature:t=0.8", "top_k:k=10",
      "top_p:p=0.9", "min_p:p=0.05"]),
])
def test_each_vllm_field_gives_the_text_of_its_sampler_chain(client, generator, fields, chain):
    for completion_kind in ("/v1/completions", "/v1/chat/completions"):
        prompt = {"prompt": "ROMEO:"} if completion_kind == "/v1/completions" else {"messages": MESSAGES}
        with_fields = client.post(completion_kind, json={**prompt, **fields, "max_tokens": 30, "seed": 11})
        with_chain = client.post(completion_kind, json={**prompt, "sampler": chain or ["multinomial"],
                                                        "max_tokens": 30, "seed": 11})
        assert with_fields.status_code == with_chain.status_code == 200, with_fields.text
        texts = [reply.json()["choices"][0].get("text", reply.json()["choices"][0].get("message", {}).get("content"))
                 for reply in (with_fields, with_chain)]
        assert texts[0] == texts[1]
    assert with_fields.json()["sampler"] == chain
    assert client.post("/v1/completions", json={"prompt": "ROMEO:", **fields, "max_tokens": 30, "seed": 11}) \
        .json()["choices"][0]["text"] == alone(generator, "ROMEO:", chain, 11, 30)


def test_the_sampler_extension_replaces_the_vllm_filters_but_keeps_the_penalties_before_it(client):
    reply = client.post("/v1/completions", json={"prompt": "ROMEO:", "top_k": 3, "min_p": 0.5,
                                                 "repetition_penalty": 1.2, "sampler": ["greedy"], "max_tokens": 4})
    assert reply.json()["sampler"] == ["repetition_penalty:penalty=1.2", "greedy"]


# --- the tokenizer routes -----------------------------------------------------------------


def test_tokenize_detokenize_and_tokenizer_info_in_vllms_shapes(generator):
    with TestClient(create_app(generator)) as client:
        ids = generator.tokenizer.encode("ROMEO:")
        assert client.post("/tokenize", json={"prompt": "ROMEO:", "add_special_tokens": False}).json() == \
            {"tokens": ids, "count": len(ids), "max_model_len": 16}
        assert client.post("/detokenize", json={"tokens": ids}).json() == {"prompt": "ROMEO:"}
        info = client.get("/tokenizer_info").json()
        assert info["eos_token"] is None and info["tokenizer_class"] == "char"
        assert info["model_max_length"] == 16 and info["chat_template"] == ChatTemplate().source
        assert client.post("/detokenize", json={"tokens": [10**6]}).status_code == 400
        assert client.post("/tokenize", json={"prompt": 5}).status_code == 400
    with TestClient(create_app(generator, api_keys=["sesame"])) as client:
        assert client.get("/tokenizer_info").status_code == 401
        assert client.post("/tokenize", json={"prompt": "a"}).status_code == 401
        assert client.post("/detokenize", json={"tokens": [1]}).status_code == 401
        assert client.get("/tokenizer_info", headers={"Authorization": "Bearer sesame"}).status_code == 200


# --- prompt scoring -----------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["ROMEO:", "First Citizen:\nBefore we proceed any further, hear me speak."])
@pytest.mark.parametrize("max_tokens", [0, 3])
def test_echo_with_logprobs_scores_the_prompt_as_gen_eval_does(client, generator, prompt, max_tokens):
    """The second prompt is longer than block_size (16): scored in gen eval's windows."""
    reply = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "echo": True,
                                                 "logprobs": 2, "temperature": 0})
    assert reply.status_code == 200, reply.text
    logprobs = reply.json()["choices"][0]["logprobs"]
    ids = generator.tokenizer.encode(prompt)
    scores = token_scores(generator.logits, ids, generator.block_size, top_n=2)
    assert len(logprobs["tokens"]) == len(ids) + max_tokens
    assert "".join(logprobs["tokens"]) == reply.json()["choices"][0]["text"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert np.allclose(logprobs["token_logprobs"][1:len(ids)], scores.logprobs, atol=1e-6)
    for position, top in enumerate(logprobs["top_logprobs"][1:len(ids)]):
        expected = {generator.tokenizer.decode([int(i)]): logprob
                    for i, logprob in zip(scores.top_ids[position], scores.top_logprobs[position])}
        assert top.keys() == expected.keys()
        assert np.allclose(list(top.values()), list(expected.values()), atol=1e-6)
    assert logprobs["text_offset"] == list(range(len(ids) + max_tokens))
    streamed = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "echo": True,
                                                    "logprobs": 2, "temperature": 0, "stream": True})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    streamed_logprobs = [value for event in events for choice in event["choices"] if choice["logprobs"]
                         for value in choice["logprobs"]["token_logprobs"]]
    assert streamed_logprobs == logprobs["token_logprobs"]


def test_lm_eval_local_completions_loglikelihoods_equal_gen_scoring(generator, tmp_path, monkeypatch):
    """lm-evaluation-harness probes /tokenizer_info and /tokenize, then sends each context and
    continuation as token ids with echo, logprobs 1 and max_tokens 1; its loglikelihoods must be
    gen.core.scoring's (what `gen eval` computes) on the same ids."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(REPOSITORY)  # the task's data_files path is relative to the repository
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with running_server(create_app(generator, model_names=["small"])) as url:
        results = lm_eval.simple_evaluate(
            model="local-completions", model_args={"base_url": f"{url}/v1/completions", "model": "small",
                                                   "tokenizer_backend": "remote"},
            tasks=["gen_choice"], task_manager=TaskManager(include_path=str(REPOSITORY / "tests" / "data")),
            log_samples=True, bootstrap_iters=0)
    samples = results["samples"]["gen_choice"]
    assert len(samples) == 3
    encode = generator.tokenizer.encode
    compared = 0
    for sample in samples:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
            context_ids, continuation_ids = encode(context), encode(continuation)
            scores = token_scores(generator.logits, context_ids + continuation_ids, generator.block_size)
            expected = scores.logprobs[len(context_ids) - 1:].sum()
            assert abs(response[0][0] - expected) < 1e-4
            compared += 1
    assert compared == 6


# --- what must be 400, not 500 ------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    (json.dumps({"prompt": "a", "sampler": ["penalties:presence=1e39,frequency=0"]}), "presence"),
    (json.dumps({"prompt": "a", "sampler": ["repetition_penalty:penalty=1e-50"]}), "penalty=1e-50"),
    (json.dumps({"prompt": "a", "repetition_penalty": 1e-50}), "penalty=1e-50"),
    # A filter whose result overflows at run time: 400 naming it, not the model's NaN.
    (json.dumps({"prompt": "ROMEO:", "max_tokens": 4,
                 "sampler": ["temperature:t=0.0001", "repetition_penalty:penalty=1.2e-38"]}),
     "sampler 'repetition_penalty:penalty=1.2e-38' turned the model's finite logits into NaN or infinite"),
    ("[" * 100_000 + "]" * 100_000, "nests arrays or objects too deeply"),
    ('{"prompt": "a", "logit_bias": {"' + "1" * 5000 + '": 1}}', "is not a token id"),
    ('{"\\ud800": 1}', "lone UTF-16 surrogate"),
    ('{"prompt": "a", "temperature": 1e999}', "temperature must be a finite number, got a number beyond"),
])
def test_requests_that_were_500s_are_400s(client, raw, message):
    reply = client.post("/v1/completions", content=raw.encode(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]
    assert "the checkpoint or export is broken" not in reply.json()["error"]["message"]


def test_the_model_is_blamed_only_for_its_own_nan(generator):
    from gen.core.sampling import SamplerOptionsError, Sampling

    chain = Sampling(["temperature:t=0.5"]).new()
    with pytest.raises(GenError, match="the model produced NaN") as raised:
        chain(np.full((1, 4), np.nan, dtype=np.float32), np.random.default_rng(0))
    assert not isinstance(raised.value, SamplerOptionsError)


def test_gen_run_names_the_sampler_option_in_one_line(small_gpt_onnx):
    from gen.core.cli import cli

    result = CliRunner().invoke(cli, ["run", str(small_gpt_onnx), "--prompt", "ROMEO:", "--max-new-tokens", "3",
                                       "--sampler", "penalties:presence=1e39,frequency=0"])
    assert result.exit_code != 0
    error = result.output.strip().splitlines()
    assert len(error) == 1 and "presence" in error[0] and "model" not in error[0]
