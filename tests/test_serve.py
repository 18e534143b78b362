"""`gen serve`: continuous batching that leaves every text as it is alone, and OpenAI's completions
API driven by the official `openai` client against a server on 127.0.0.1.

The model is conftest's small GPT exported to ONNX (block_size 16, so long generations slide
their window and are prefilled again while others run beside them). What a choice must
equal is `OnnxModel.generate([prompt], sampler, seed)`, the text `gen run` prints after the
prompt with that seed.
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.testclient import TestClient

from serve_helpers import running_server
from gen.core import LogitsFilter, hookimpl, mask_logits
from gen.core.errors import GenError
from gen.core.registry import get_plugins
from gen.core.sampling import Sampling
from gen.runtime.api import Limits
from gen.runtime.onnx_model import OnnxModel
from gen.runtime.scheduler import Choice, Failed, Finished, Piece, Scheduler, exact_padding_quantum
from gen.runtime.server import (
    Inbox,
    ServerState,
    completions,
    create_app,
    default_allowed_hosts,
    health,
    http_error,
    models,
    playground,
    samplers,
    server_error,
)

BUILT_IN_CHAINS = [
    ["multinomial"], ["greedy"], ["temperature:t=0.7"], ["top_k:k=5"], ["top_p:p=0.8"], ["min_p:p=0.2"],
    ["repetition_penalty:penalty=1.5"], ["penalties:presence=0.8,frequency=0.4"], ["no_repeat_ngram:n=2"],
    ["mirostat:tau=2.5"], ["top_k:k=10", "temperature:t=1.5", "greedy"],
]
PROMPTS = ["ROMEO:", "\n", "First Citizen:\nBefore we proceed any further, hear me speak.", "a"]


@pytest.fixture(scope="module")
def generator(small_gpt_onnx):
    return OnnxModel(small_gpt_onnx)


def alone(generator, prompt, specs, seed, max_tokens, stop=()):
    """What `gen run --seed SEED` prints after the prompt."""
    return generator.generate([prompt], sampler=specs, seed=seed, max_new_tokens=max_tokens, stop=stop)[0]


class Collector:
    """A request's events, collected from the scheduler thread."""

    def __init__(self, choices=1):
        self.texts = [""] * choices
        self.tokens = [[] for _ in range(choices)]
        self.finished = [None] * choices
        self.failed = None
        self.done = threading.Event()

    def __call__(self, event):
        if isinstance(event, Failed):
            self.failed = event.message
            self.done.set()
            return
        self.texts[event.choice] += event.text
        if isinstance(event, Piece) and event.token is not None:
            self.tokens[event.choice].append(event.token)
        if isinstance(event, Finished):
            self.finished[event.choice] = event
            if all(self.finished):
                self.done.set()


# --- the scheduler ----------------------------------------------------------------------


def test_padding_by_the_measured_quantum_keeps_logits_bitwise_equal(generator):
    quantum = exact_padding_quantum(generator)
    assert quantum is not None and quantum >= 1
    # The property itself, on lengths the probe did not use: a row padded by 2 quanta.
    ids = [5, 9, 2, 7, 1]
    from gen.core.generation import left_pad
    _, past = generator.step(*left_pad([ids]), None)
    token = np.array([[3]], dtype=np.int64)
    expected, _ = generator.step(token, np.ones((1, len(ids) + 1), dtype=np.int64), past)
    pad = 2 * quantum
    padded_past = [np.pad(array, ((0, 0), (0, 0), (pad, 0), (0, 0))) for array in past]
    mask = np.concatenate([np.zeros((1, pad), dtype=np.int64), np.ones((1, len(ids) + 1), dtype=np.int64)], axis=1)
    got, _ = generator.step(token, mask, padded_past)
    assert np.array_equal(got, expected)


def test_many_concurrent_choices_each_equal_their_text_alone(generator):
    """44 requests over every built-in sampler, arriving while others run, through a batch of 12:
    each text equals its run alone with its seed, whatever ran beside it."""
    scheduler = Scheduler(generator, max_batch=12, max_queue=100).start()
    jobs = []
    try:
        for k in range(44):
            prompt, specs = PROMPTS[k % len(PROMPTS)], BUILT_IN_CHAINS[k % len(BUILT_IN_CHAINS)]
            max_tokens = 20 + (k * 37) % 90
            collector = Collector()
            choice = Choice(generator.tokenizer.encode(prompt), Sampling(specs), seed=k, max_tokens=max_tokens)
            scheduler.submit([choice], collector)
            jobs.append((prompt, specs, k, max_tokens, collector))
            time.sleep(0.003 * (k % 3))  # arrivals spread over the running steps
        for *_, collector in jobs:
            assert collector.done.wait(60), "a request did not finish"
    finally:
        scheduler.stop(timeout=30)
    assert scheduler.quantum >= 1 and scheduler.exact
    for prompt, specs, seed, max_tokens, collector in jobs:
        assert collector.failed is None, collector.failed
        assert collector.texts[0] == alone(generator, prompt, specs, seed, max_tokens), (specs, seed)
        assert collector.finished[0].reason == "length" and collector.finished[0].tokens == max_tokens


def test_stop_strings_and_token_probabilities_match_the_generator(generator):
    scheduler = Scheduler(generator, max_batch=4).start()
    try:
        stopped, probed = Collector(), Collector()
        scheduler.submit([Choice(generator.tokenizer.encode("ROMEO:"), Sampling(["top_k:k=3"]), 4, 300,
                                 stop=["e", "\n"])], stopped)
        scheduler.submit([Choice(generator.tokenizer.encode("JULIET:"), Sampling(["temperature:t=0.9"]), 5, 40,
                                 logprobs=3)], probed)
        assert stopped.done.wait(30) and probed.done.wait(30)
    finally:
        scheduler.stop(timeout=30)
    assert stopped.texts[0] == alone(generator, "ROMEO:", ["top_k:k=3"], 4, 300, stop=["e", "\n"])
    assert stopped.finished[0].reason == "stop" and stopped.finished[0].tokens < 300
    expected = list(generator.tokens("JULIET:", sampler=["temperature:t=0.9"], seed=5, max_new_tokens=40, logprobs=3))
    assert [token.to_json() for token in probed.tokens[0]] == [token.to_json() for token in expected]


def test_a_cancelled_request_frees_its_slot_within_one_step(generator):
    scheduler = Scheduler(generator, max_batch=1, max_queue=4)  # stepped by hand, no thread
    first, second = Collector(), Collector()
    request = scheduler.submit([Choice([1, 2, 3], Sampling(), 0, 1000)], first)
    scheduler._step()
    scheduler.submit([Choice([4, 5], Sampling(), 1, 5)], second)
    scheduler._step()
    assert scheduler.queue_depth == 1 and len(first.texts[0]) == 2 and second.texts[0] == ""  # the batch is full
    request.cancel()
    produced = first.texts[0]
    scheduler._step()
    assert first.texts[0] == produced and not first.done.is_set()  # nothing more for the cancelled one
    assert scheduler.queue_depth == 0 and scheduler.active_rows == 1 and len(second.texts[0]) == 1  # its slot, now
    for _ in range(4):
        scheduler._step()
    assert second.done.is_set() and scheduler.active_rows == 0


def test_a_full_queue_refuses_and_a_stopping_scheduler_finishes_what_it_took(generator):
    from gen.runtime.scheduler import Busy

    scheduler = Scheduler(generator, max_batch=1, max_queue=1)
    collectors = [Collector() for _ in range(2)]
    for collector in collectors:
        scheduler.submit([Choice([1], Sampling(), 0, 30)], collector)
    with pytest.raises(Busy, match="max-queue 1"):
        scheduler.submit([Choice([1], Sampling(), 0, 30)], Collector())
    scheduler.start()
    scheduler.stop(timeout=30)
    assert all(collector.done.is_set() for collector in collectors)
    with pytest.raises(Busy, match="shutting down"):
        scheduler.submit([Choice([1], Sampling(), 0, 1)], Collector())


class Explodes(LogitsFilter):
    """Fails at its third token (a broken plugin)."""

    def __init__(self):
        self.calls = 0

    def filter(self, logits):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom")
        return logits


def test_a_sampler_that_breaks_fails_its_request_only(generator, fresh_plugins):
    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register("explodes", Explodes)

    get_plugins().register(Plugin(), "gen-explodes")
    scheduler = Scheduler(generator, max_batch=4).start()
    try:
        broken, fine = Collector(), Collector()
        scheduler.submit([Choice([1, 2], Sampling(["explodes"]), 0, 50)], broken)
        scheduler.submit([Choice([1, 2], Sampling(["top_k:k=4"]), 1, 50)], fine)
        assert broken.done.wait(30) and fine.done.wait(30)
    finally:
        scheduler.stop(timeout=30)
    assert broken.failed == "sampler 'explodes' (from gen-explodes) raised RuntimeError: boom"
    assert fine.failed is None and fine.texts[0] == alone(generator, generator.tokenizer.decode([1, 2]),
                                                          ["top_k:k=4"], 1, 50)


def test_a_model_without_a_kv_cache_batches_whole_windows(tokenizer, tmp_path):
    import torch

    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model
    from gen.plugins.bigram import BigramLanguageModel

    torch.manual_seed(0)
    model = BigramLanguageModel.from_config({"vocab_size": tokenizer.vocab_size, "block_size": 8}).eval()
    path = tmp_path / "bigram.onnx"
    export_model(model, path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(verify=False, progress=None))
    bigram = OnnxModel(path)
    scheduler = Scheduler(bigram, max_batch=3).start()
    try:
        jobs = [(prompt, specs, seed, Collector()) for seed, (prompt, specs) in
                enumerate(zip(PROMPTS, [["top_k:k=3"], ["mirostat"], ["no_repeat_ngram:n=2"], ["greedy"]]))]
        for prompt, specs, seed, collector in jobs:
            scheduler.submit([Choice(bigram.tokenizer.encode(prompt), Sampling(specs), seed, 40)], collector)
        assert all(collector.done.wait(30) for *_, collector in jobs)
    finally:
        scheduler.stop(timeout=30)
    for prompt, specs, seed, collector in jobs:
        assert collector.texts[0] == alone(bigram, prompt, specs, seed, 40)


def test_a_sentencepiece_style_tokenizer_keeps_its_spaces_as_gen_run_does(make_gpt, text, tmp_path):
    """A Metaspace tokenizer decodes "▁the" as "the" alone and " the" after a word: each row's text
    is decoded after its prompt's last tokens, as `gen run` decodes it, so the texts are equal."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model
    from gen.plugins.hf_tokenizers import HFTokenizer

    file = tmp_path / "tokenizer.json"
    sentencepiece = Tokenizer(models.BPE(unk_token="<unk>"))
    sentencepiece.pre_tokenizer = pre_tokenizers.Metaspace()
    sentencepiece.decoder = decoders.Metaspace()
    sentencepiece.train_from_iterator([text], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"],
                                                                  show_progress=False))
    sentencepiece.save(str(file))
    tokenizer = HFTokenizer.train(text, path=str(file))
    path = tmp_path / "sentencepiece.onnx"
    export_model(make_gpt(tokenizer.vocab_size), path, tokenizer_document=tokenizer_to_dict("hf", tokenizer),
                 options=ExportOptions(verify=False, progress=None))
    model = OnnxModel(path)
    scheduler = Scheduler(model, max_batch=4).start()
    try:
        jobs = [(prompt, seed, Collector()) for seed, prompt in enumerate(["ROMEO: the", "First Citizen:", "a b"] * 2)]
        for prompt, seed, collector in jobs:
            scheduler.submit([Choice(model.tokenizer.encode(prompt), Sampling(["top_k:k=20"]), seed, 30)], collector)
        assert all(collector.done.wait(30) for *_, collector in jobs)
    finally:
        scheduler.stop(timeout=30)
    for prompt, seed, collector in jobs:
        assert collector.failed is None, collector.failed
        assert collector.texts[0] == alone(model, prompt, ["top_k:k=20"], seed, 30), (prompt, seed)
    # A text that starts with a word's space: what decoding without the prompt would lose.
    assert any(collector.texts[0].startswith(" ") for *_, collector in jobs)


# --- the HTTP API, with the official client ---------------------------------------------


class BanLetter(LogitsFilter):
    """Forbid one letter (a third-party sampler, registered in-process)."""

    def __init__(self, letter: str = "e"):
        self.letter = letter

    def filter(self, logits, context):
        ids = context.tokenizer.encode(self.letter)
        remove = np.zeros(logits.shape, dtype=bool)
        remove[:, ids] = True
        return mask_logits(logits, remove)


class BanLetterPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("ban_letter", BanLetter)


@pytest.fixture(scope="module")
def server(small_gpt_onnx):
    """A server with a plugin sampler registered, small limits to test them, and three names
    for its model (the tests' requests use the shorter two)."""
    from gen.core.registry import reset_plugins

    reset_plugins()
    get_plugins().register(BanLetterPlugin(), "gen-ban-letter")
    generator = OnnxModel(small_gpt_onnx)
    app = create_app(generator, model_names=["small-gpt.onnx", "small-gpt", "m"], max_batch=8, max_queue=32,
                     max_body_bytes=4096, limits=Limits(max_tokens=500, max_prompt_tokens=100, max_choices=8))
    with running_server(app) as url:
        yield url, generator
    reset_plugins()


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def test_completions_equal_gen_run_with_the_same_seed(server, client):
    _, generator = server
    response = client.completions.create(model="small-gpt", prompt="ROMEO:", max_tokens=60, seed=11,
                                         temperature=0.8, top_p=0.9)
    assert response.choices[0].text == alone(generator, "ROMEO:", ["temperature:t=0.8", "top_p:p=0.9"], 11, 60)
    assert response.choices[0].finish_reason == "length" and response.object == "text_completion"
    assert response.usage.prompt_tokens == 6 and response.usage.completion_tokens == 60
    assert response.usage.total_tokens == 66
    assert response.model_extra["sampler"] == ["temperature:t=0.8", "top_p:p=0.9"]
    greedy = client.completions.create(model="small-gpt", prompt="ROMEO:", max_tokens=30, temperature=0)
    assert greedy.choices[0].text == alone(generator, "ROMEO:", ["greedy"], 0, 30)


def test_streaming_sends_the_same_text_then_usage_and_done(server, client):
    _, generator = server
    chunks = list(client.completions.create(model="m", prompt="JULIET:", max_tokens=200, seed=3, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == alone(generator, "JULIET:", [], 3, 200)
    # It streamed, not one piece: the first token goes out at once, the rest as the loop
    # collects them every few milliseconds (200 tokens take far longer than one interval).
    assert len([chunk for chunk in chunks if chunk.choices]) >= 2
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 200
    raw = httpx.post(f"{server[0]}/v1/completions", json={"prompt": "a", "max_tokens": 3, "stream": True}, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n") and "usage" not in raw.text  # usage only when asked


def test_n_and_several_prompts_number_the_choices_and_their_seeds(server, client):
    _, generator = server
    response = client.completions.create(model="m", prompt=["ROMEO:", "JULIET:"], n=3, max_tokens=25, seed=100,
                                         extra_body={"sampler": ["top_k:k=8"]})
    assert [choice.index for choice in response.choices] == list(range(6))
    for choice in response.choices:
        prompt = ["ROMEO:", "JULIET:"][choice.index // 3]
        assert choice.text == alone(generator, prompt, ["top_k:k=8"], 100 + choice.index, 25)
    assert len({choice.text for choice in response.choices}) == 6
    assert response.usage.prompt_tokens == 13 and response.usage.completion_tokens == 150


def test_stop_ends_a_choice_at_the_stop_string(server, client):
    _, generator = server
    response = client.completions.create(model="m", prompt="ROMEO:", max_tokens=400, seed=2, stop=["e", "o"])
    text = response.choices[0].text
    assert response.choices[0].finish_reason == "stop"
    assert text == alone(generator, "ROMEO:", [], 2, 400, stop=["e", "o"]) and "e" not in text and "o" not in text
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="m", prompt="ROMEO:", max_tokens=400, seed=2, stop=["e", "o"], stream=True))
    assert streamed == text


def test_logprobs_have_openais_shape_and_gens_values(server, client):
    _, generator = server
    response = client.completions.create(model="m", prompt="ROMEO:", max_tokens=12, seed=5, logprobs=3)
    logprobs = response.choices[0].logprobs
    expected = list(generator.tokens("ROMEO:", seed=5, max_new_tokens=12, logprobs=3))
    assert logprobs.tokens == [token.text for token in expected]
    assert logprobs.token_logprobs == [token.logprob for token in expected]
    assert logprobs.top_logprobs == [{alt.text: alt.logprob for alt in token.top} for token in expected]
    assert logprobs.text_offset == list(range(6, 18))  # after the 6 characters of the prompt
    streamed = [chunk.choices[0].logprobs for chunk in client.completions.create(
        model="m", prompt="ROMEO:", max_tokens=12, seed=5, logprobs=3, stream=True) if chunk.choices]
    assert sum((part.tokens for part in streamed), []) == logprobs.tokens
    assert sum((part.text_offset for part in streamed), []) == logprobs.text_offset


def test_the_sampler_extension_reaches_plugin_samplers(server, client):
    _, generator = server
    specs = ["ban_letter:letter=e", "top_k:k=6", "temperature:t=1.3"]
    response = client.completions.create(model="m", prompt="ROMEO:", max_tokens=200, seed=9,
                                         temperature=0.1, extra_body={"sampler": specs})  # sampler wins
    text = response.choices[0].text
    assert "e" not in text and text == alone(generator, "ROMEO:", specs, 9, 200)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="m", prompt="a", extra_body={"sampler": ["ban_letter:colour=red"]})
    assert bad.value.body["param"] == "sampler" and "letter (str='e')" in bad.value.body["message"]


def test_logit_bias_and_penalties_map_onto_gens_samplers(server, client):
    _, generator = server
    e = generator.tokenizer.encode("e")[0]
    response = client.completions.create(model="m", prompt="ROMEO:", max_tokens=200, seed=1, logit_bias={str(e): -100})
    assert "e" not in response.choices[0].text
    assert response.choices[0].text == generator.generate(["ROMEO:"], seed=1, max_new_tokens=200,
                                                          logit_bias={e: -100.0})[0]
    response = client.completions.create(model="m", prompt="ROMEO:", max_tokens=100, seed=1, presence_penalty=1.5,
                                         frequency_penalty=0.5, temperature=0.5)
    specs = ["penalties:presence=1.5,frequency=0.5", "temperature:t=0.5"]
    assert response.choices[0].text == alone(generator, "ROMEO:", specs, 1, 100)


def test_echo_puts_the_prompt_first(server, client):
    _, generator = server
    response = client.completions.create(model="m", prompt="ROMEO:", max_tokens=10, seed=4, echo=True)
    assert response.choices[0].text == "ROMEO:" + alone(generator, "ROMEO:", [], 4, 10)


def test_token_id_prompts_are_accepted(server, client):
    _, generator = server
    ids = generator.tokenizer.encode("ROMEO:")
    response = client.completions.create(model="m", prompt=ids, max_tokens=10, seed=4)
    assert response.choices[0].text == alone(generator, "ROMEO:", [], 4, 10)


BAD_REQUESTS = [
    ({"max_tokens": 5}, "prompt", "prompt is required"),
    ({"prompt": 5}, "prompt", "prompt must be a string"),
    ({"prompt": ""}, "prompt", "prompt is empty"),
    ({"prompt": "caf\u00e9"}, "prompt", "cannot be encoded by this model's tokenizer"),
    ({"prompt": [1, 2, 99999]}, "prompt", "outside the vocabulary"),
    ({"prompt": "a" * 101}, "prompt", "101 tokens, over this server's limit of 100"),
    ({"prompt": "a", "max_tokens": "ten"}, "max_tokens", "max_tokens must be an integer, got a string"),
    ({"prompt": "a", "max_tokens": 501}, "max_tokens", "over this server's limit of 500"),
    ({"prompt": "a", "max_tokens": -1}, "max_tokens", "at least 0"),
    ({"prompt": "a", "temperature": 3}, "temperature", "between 0 and 2"),
    ({"prompt": "a", "temperature": True}, "temperature", "must be a number"),
    ({"prompt": "a", "top_p": 0}, "top_p", "above 0"),
    ({"prompt": "a", "n": 9}, "n", "at most 8 per request"),
    ({"prompt": "a", "seed": -1}, "seed", "at least 0"),
    ({"prompt": "a", "stop": [1]}, "stop", "a string or a list of strings"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": "a", "logprobs": 21}, "logprobs", "limit of 20"),
    ({"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias", "not a token id"),
    ({"prompt": "a", "logit_bias": {"1": 1000}}, "logit_bias", "from -100 to 100"),
    ({"prompt": "a", "sampler": "top_k"}, "sampler", "a list of --sampler specs"),
    ({"prompt": "a", "sampler": ["no_such_sampler"]}, "sampler", "unknown sampler 'no_such_sampler'; known samplers"),
    ({"prompt": "a", "sampler": ["top_k:k=many"]}, "sampler", "is not a valid int"),
    ({"prompt": "a", "sampler": ["greedy", "top_k"]}, "sampler", "must come last"),
    ({"prompt": "a", "suffix": "x"}, "suffix", "not supported"),
    ({"prompt": "a", "max_token": 5}, "max_token", "unknown field 'max_token'"),
    ({"prompt": "a", "stream": "yes"}, "stream", "true or false"),
]


@pytest.mark.parametrize("body,param,message", BAD_REQUESTS)
def test_bad_requests_get_400_naming_the_problem(server, body, param, message):
    response = httpx.post(f"{server[0]}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"], error["message"]


@pytest.mark.parametrize("content,status,message", [
    (b'{"prompt": "a",', 400, "not valid JSON"),
    (b'{"prompt": "a", "temperature": NaN}', 400, "not valid JSON"),
    (b'["prompt"]', 400, "must be a JSON object"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'{"prompt": "' + b"a" * 5000 + b'"}', 413, "over this server's limit of 4096 bytes"),
])
def test_malformed_and_oversized_bodies_get_a_clear_error(server, content, status, message):
    response = httpx.post(f"{server[0]}/v1/completions", content=content, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status and message in response.json()["error"]["message"]


def test_unknown_routes_and_methods_answer_in_openais_shape(server):
    missing = httpx.get(f"{server[0]}/v1/chat", timeout=30)
    assert missing.status_code == 404 and "POST /v1/completions" in missing.json()["error"]["message"]
    wrong_method = httpx.get(f"{server[0]}/v1/completions", timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_models_samplers_health_and_metrics(server, client):
    url, generator = server
    assert [model.id for model in client.models.list()] == ["small-gpt.onnx", "small-gpt", "m"]
    samplers = {entry["name"]: entry for entry in httpx.get(f"{url}/v1/samplers", timeout=30).json()["data"]}
    assert samplers["ban_letter"] == {"name": "ban_letter", "provider": "gen-ban-letter", "kind": "filter",
                                      "description": "Forbid one letter (a third-party sampler, registered in-process).",
                                      "options": {"letter": {"type": "str", "default": "e"}}}
    assert samplers["top_p"]["options"] == {"p": {"type": "float", "default": 0.9}}
    assert samplers["mirostat"]["kind"] == "sampler" and samplers["greedy"]["provider"] == "gen"
    health = httpx.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["exact_batching"] is True

    def metric(text, name):
        line = next(line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])

    before = httpx.get(f"{url}/metrics", timeout=30).text
    client.completions.create(model="m", prompt="a", max_tokens=7, n=2)
    httpx.post(f"{url}/v1/completions", json={"prompt": 1}, timeout=30)
    after = httpx.get(f"{url}/metrics", timeout=30)
    assert after.headers["content-type"].startswith("text/plain")
    assert metric(after.text, "gen_tokens_generated_total") - metric(before, "gen_tokens_generated_total") == 14
    assert metric(after.text, 'gen_requests_total{outcome="completed"}') - \
        metric(before, 'gen_requests_total{outcome="completed"}') == 1
    assert metric(after.text, 'gen_requests_total{outcome="bad_request"}') >= 1
    for name in ("gen_queue_depth", "gen_active_rows", "gen_batch_size_count",
                 "gen_time_to_first_token_seconds_count", "gen_inter_token_latency_seconds_count"):
        assert metric(after.text, name) >= 0


def test_the_playground_page_and_its_files_come_from_the_package(server):
    page = httpx.get(f"{server[0]}/", timeout=30)
    assert page.status_code == 200 and "<title>gen playground: small-gpt.onnx</title>" in page.text
    assert '[[0.85, "red"]' in page.text  # gen.core.colours.PROBABILITY_COLOURS
    for name in ("playground.js", "playground.css"):
        assert httpx.get(f"{server[0]}/playground/{name}", timeout=30).status_code == 200
    for name in ("", "playground/playground.js", "playground/playground.css"):
        assert "://" not in httpx.get(f"{server[0]}/{name}", timeout=30).text  # nothing fetched from elsewhere


def test_no_page_serves_the_raw_template(server):
    url, _ = server
    assert httpx.get(f"{url}/playground/index.html", timeout=30).status_code == 404
    for path in ("/", "/playground/playground.js", "/playground/playground.css"):
        assert "{{" not in httpx.get(f"{url}{path}", timeout=30).text, path


def test_a_body_not_declared_json_gets_415_and_runs_nothing(server):
    url, _ = server
    tokens = 'gen_tokens_generated_total'
    before = [line for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines() if line.startswith(tokens)]
    body = json.dumps({"prompt": "ROMEO:", "max_tokens": 5}).encode()
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        refused = httpx.post(f"{url}/v1/completions", content=body, headers=headers, timeout=30)
        assert refused.status_code == 415, refused.text
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert "Content-Type: application/json" in refused.json()["error"]["message"]
    after = [line for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines() if line.startswith(tokens)]
    assert after == before  # no token was generated
    charset = httpx.post(f"{url}/v1/completions", content=body, timeout=30,
                         headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status_code == 200


def test_a_model_name_not_served_is_a_404_in_openais_shape(server, client):
    assert client.models.retrieve("small-gpt").id == "small-gpt"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("gpt-4")
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="gpt-4", prompt="a", max_tokens=3)
    assert unknown.value.body["param"] == "model" and "'small-gpt.onnx', 'small-gpt', 'm'" in unknown.value.body["message"]
    assert client.completions.create(model="small-gpt.onnx", prompt="a", max_tokens=3).model == "small-gpt.onnx"
    assert client.completions.create(model="m", prompt="a", max_tokens=3).model == "small-gpt.onnx"  # the first name


def test_api_keys_guard_every_route_but_health_and_the_playground_page(generator):
    with running_server(create_app(generator, api_keys=["first-key", "second-key"])) as url:
        for key in ("first-key", "second-key"):
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60) as keyed:
                assert keyed.completions.create(model="small-gpt.onnx", prompt="a", max_tokens=3, seed=1).choices
                assert [model.id for model in keyed.models.list()] == ["small-gpt.onnx"]
        for key in ("wrong-key", "first-keyX"):  # (without a key at all, the client refuses to send)
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60) as unkeyed:
                with pytest.raises(openai.AuthenticationError) as refused:
                    unkeyed.completions.create(model="small-gpt.onnx", prompt="a", max_tokens=3)
            assert refused.value.body["code"] == "invalid_api_key" and refused.value.status_code == 401
        for path in ("/v1/models", "/v1/samplers", "/metrics", "/v1/nowhere"):
            refused = httpx.get(f"{url}{path}", timeout=30)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
            assert refused.json()["error"] == {
                "message": "this server needs an API key, sent as the header Authorization: Bearer KEY",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        for path in ("/health", "/", "/playground/playground.js", "/playground/playground.css"):
            assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path  # no data in these


def test_a_loopback_server_refuses_other_host_headers(generator):
    assert default_allowed_hosts("0.0.0.0") == ["*"] and default_allowed_hosts("192.168.1.5") == ["*"]
    assert "[::1]" in default_allowed_hosts("::1") and "127.0.0.2" in default_allowed_hosts("127.0.0.2")
    with running_server(create_app(generator, allowed_hosts=default_allowed_hosts("127.0.0.1"))) as url:
        port = url.rsplit(":", 1)[1]
        refused = httpx.get(f"{url}/v1/models", headers={"Host": f"evil.example:{port}"}, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == (
            f"this server does not answer to the host 'evil.example:{port}' (gen serve --allowed-hosts)")
        for host in (f"localhost:{port}", "127.0.0.1", f"[::1]:{port}"):
            assert httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=30).status_code == 200, host
    with pytest.raises(GenError, match="--allowed-hosts 'a.\\*.example'"):
        create_app(generator, allowed_hosts=["a.*.example"])


def test_cors_headers_only_for_the_origins_named(generator):
    origin = "https://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    closed = TestClient(create_app(generator))
    assert "access-control-allow-origin" not in closed.get("/health", headers={"Origin": origin}).headers
    assert "access-control-allow-origin" not in closed.options("/v1/completions", headers=preflight).headers
    opened = TestClient(create_app(generator, cors_origins=[origin], api_keys=["key"]))
    allowed = opened.options("/v1/completions", headers=preflight)  # a preflight sends no key
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == origin
    assert opened.get("/health", headers={"Origin": origin}).headers["access-control-allow-origin"] == origin
    other = opened.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_the_model_name_cannot_break_the_page(small_gpt_onnx):
    name = 'my "model"</script><b>.onnx'
    with running_server(create_app(OnnxModel(small_gpt_onnx), model_names=[name])) as url:
        page = httpx.get(f"{url}/", timeout=30).text
    assert "</script><b>" not in page  # the name cannot close the script or add markup
    assert "<title>gen playground: my &quot;model&quot;&lt;/script&gt;&lt;b&gt;.onnx</title>" in page
    assert 'window.MODEL = "my \\"model\\"<\\/script><b>.onnx";' in page  # a JSON string: the same text in JS


# --- each handler on its own: an app with just that route, and a ServerState ---------------


def app_of(handler, path: str = "/", state: ServerState | None = None, **route) -> TestClient:
    """A client of an app with one route to `handler` and gen serve's error handlers; no
    lifespan, so the scheduler stays unstarted unless a test starts it."""
    app = Starlette(routes=[Route(path, handler, **route)],
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.server = state
    return TestClient(app, raise_server_exceptions=False)


def test_health_models_and_the_playground_answer_from_the_state_alone(generator, small_gpt_onnx):
    state = ServerState.for_model(generator, model_names=["m.onnx"], max_batch=4)
    assert app_of(health, "/health", state).get("/health").json() == {
        "status": "ok", "model": "m.onnx", "queue_depth": 0, "active_rows": 0, "max_batch": 4,
        "exact_batching": state.scheduler.exact}
    listed = app_of(models, "/v1/models", state).get("/v1/models").json()["data"]
    assert listed == [{"id": "m.onnx", "object": "model", "created": int(os.path.getmtime(small_gpt_onnx)),
                       "owned_by": "gen", "block_size": 16, "vocab_size": generator.vocab_size, "model": "gpt"}]
    page = app_of(playground, "/", state).get("/")
    assert page.headers["content-type"].startswith("text/html") and page.text == state.playground_page
    assert "<title>gen playground: m.onnx</title>" in page.text


def test_the_samplers_handler_needs_no_state():
    listed = {entry["name"]: entry for entry in app_of(samplers, "/v1/samplers").get("/v1/samplers").json()["data"]}
    assert listed["top_k"]["kind"] == "filter" and listed["greedy"]["kind"] == "sampler"
    assert listed["min_p"]["options"] == {"p": {"type": "float", "default": 0.05}}


def test_completions_refuses_a_bad_body_and_counts_it_before_the_scheduler_sees_it(generator):
    state = ServerState.for_model(generator)  # its scheduler never started: nothing may reach it
    response = app_of(completions, "/v1/completions", state, methods=["POST"]).post(
        "/v1/completions", json={"prompt": 1})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("prompt must be a string")
    assert state.metrics.registry.get_sample_value("gen_requests_total", {"outcome": "bad_request"}) == 1
    assert state.scheduler.queue_depth == 0


def test_the_error_handlers_answer_in_openais_shape_with_one_line(capsys):
    def fails(request):
        raise RuntimeError("[../src/step.cc:12] the disk is on fire\nand more detail below")

    def asserts(request):
        raise AssertionError()

    client = app_of(fails, "/fails")
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert missing.json()["error"]["message"].startswith("GET /nowhere: Not Found; the routes are POST /v1/completions")
    wrong_method = client.post("/fails")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "HEAD"}  # the route's headers go along
    failed = client.get("/fails")
    assert failed.status_code == 500
    assert failed.json()["error"] == {"message": "internal error: RuntimeError: the disk is on fire",
                                      "type": "server_error", "param": None, "code": None}
    assert "and more detail below" in capsys.readouterr().err  # the whole traceback, for the server's log
    bare = app_of(asserts, "/asserts").get("/asserts")
    assert bare.json()["error"]["message"] == "internal error: AssertionError"


def test_a_client_that_leaves_mid_stream_frees_its_rows(server):
    url, _ = server
    with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                      json={"prompt": "a", "max_tokens": 500, "stream": True, "n": 4}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health", timeout=30).json()["active_rows"]:
        assert time.monotonic() < deadline, "the cancelled rows stayed in the batch"
        time.sleep(0.02)
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'gen_requests_total{outcome="cancelled"} 1.0' in metrics


class Slow(LogitsFilter):
    """Takes 10 ms a token, so that a request stays in the batch while the test looks."""

    def filter(self, logits):
        time.sleep(0.01)
        return logits


class SlowPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("slow", Slow)


@pytest.fixture
def slow_sampler():
    plugin = SlowPlugin()
    get_plugins().register(plugin, "gen-slow")
    yield "slow"
    get_plugins().unregister(plugin)


def test_a_full_queue_answers_503_with_retry_after(small_gpt_onnx, slow_sampler):
    generator = OnnxModel(small_gpt_onnx)
    app = create_app(generator, max_batch=1, max_queue=1)
    with running_server(app) as url:
        body = {"prompt": "a", "max_tokens": 1000, "stream": True, "sampler": [slow_sampler]}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines).startswith("data: ")  # in the batch
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as waiting:
                deadline = time.monotonic() + 10
                while httpx.get(f"{url}/health", timeout=30).json()["queue_depth"] == 0:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
                    with pytest.raises(openai.APIStatusError) as refused:
                        client.completions.create(model="small-gpt.onnx", prompt="a", max_tokens=5)
                assert refused.value.status_code == 503
                assert refused.value.response.headers["retry-after"] == "1"
                assert "max-queue 1" in refused.value.body["message"]
                assert waiting.status_code == 200


def test_thirty_two_concurrent_streams_each_equal_their_text_alone(server):
    """A small version of benchmarks/serve_load.py: concurrent streaming clients, mixed
    samplers, every completion checked against its run alone."""
    url, generator = server

    async def one(client, k):
        specs = BUILT_IN_CHAINS[k % len(BUILT_IN_CHAINS)]
        stream = await client.completions.create(model="m", prompt=PROMPTS[k % len(PROMPTS)], max_tokens=30 + k,
                                                 seed=k, stream=True, extra_body={"sampler": specs})
        return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    async def everyone():
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, k) for k in range(32))), 120)

    texts = asyncio.run(everyone())
    for k, text in enumerate(texts):
        specs = BUILT_IN_CHAINS[k % len(BUILT_IN_CHAINS)]
        assert text == alone(generator, PROMPTS[k % len(PROMPTS)], specs, k, 30 + k), (k, specs)


# --- the command ------------------------------------------------------------------------


def start_gen_serve(model, *options: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`gen serve MODEL --port 0 OPTIONS` in a subprocess, and its URL once it listens."""
    gen = os.path.join(os.path.dirname(sys.executable), "gen")
    process = subprocess.Popen([gen, "serve", str(model), "--port", "0", *options], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    first_line = process.stdout.readline()
    if " at http://127.0.0.1:" not in first_line:
        process.kill()
        raise AssertionError(first_line + process.stderr.read())
    return process, first_line.split(" at ")[1].split()[0]


def test_sigterm_finishes_the_requests_in_flight_then_exits(small_gpt_onnx):
    process, url = start_gen_serve(small_gpt_onnx)
    try:
        body = {"prompt": "ROMEO:", "max_tokens": 4000, "seed": 8, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            received = [next(lines)]
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):  # no longer accepting, while the stream goes on
                httpx.get(f"{url}/health", timeout=5)
            received += list(lines)
        process.wait(timeout=60)
    finally:
        process.kill()
    output = process.stdout.read()
    assert process.returncode == 0, process.stderr.read()
    assert "gen serve: stopped" in output
    events = [line[len("data: "):] for line in received if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(event)["choices"][0]["text"] for event in events[:-1])
    assert text == alone(OnnxModel(small_gpt_onnx), "ROMEO:", [], 8, 4000)


def test_requests_outlasting_the_graceful_timeout_end_with_an_error_and_gen_serve_exits_0(small_gpt_onnx):
    process, url = start_gen_serve(small_gpt_onnx, "--graceful-timeout", "1", "--max-tokens-limit", "1000000")
    long = {"prompt": "ROMEO:", "max_tokens": 1000000, "seed": 8}  # far longer than the test
    whole: list[httpx.Response] = []
    try:
        waiting = threading.Thread(target=lambda: whole.append(
            httpx.post(f"{url}/v1/completions", json=long, timeout=60)))
        waiting.start()
        with httpx.stream("POST", f"{url}/v1/completions", json={**long, "stream": True}, timeout=60) as response:
            lines = response.iter_lines()
            received = [next(lines)]
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/health", timeout=30).json()["active_rows"] < 2:
                assert time.monotonic() < deadline, "the whole request did not start"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            received += list(lines)
        waiting.join(30)
        process.wait(timeout=30)
        stopped_after = time.monotonic() - stopping
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert process.returncode == 0 and "Aborted!" not in stderr, stderr
    assert 1 <= stopped_after < 5, stopped_after  # the graceful timeout, then the time to end them
    events = [line[len("data: "):] for line in received if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]  # a stream ends with an error event in OpenAI's shape, not [DONE]
    assert "outlasted its --graceful-timeout of 1 s" in error["message"] and error["type"] == "server_error"
    assert whole[0].status_code == 503 and "graceful-timeout" in whole[0].json()["error"]["message"]


def test_gen_serve_takes_keys_from_options_environment_and_file_and_checks_hosts(small_gpt_onnx, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("from-file\n\n  second-from-file  \n")
    # (--api-key on the command line would replace GEN_SERVE_API_KEY, as click's options do.)
    process, url = start_gen_serve(small_gpt_onnx, "--api-key-file", str(keys), "--served-model-name", "tiny",
                                   env={"GEN_SERVE_API_KEY": "env-one, env-two"})
    try:
        assert "requests need one of 4 API key(s)" in process.stdout.readline() + process.stdout.readline()
        for key in ("from-file", "second-from-file", "env-one", "env-two"):
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60) as client:
                assert [model.id for model in client.models.list()] == ["tiny"], key
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        port = url.rsplit(":", 1)[1]
        rebound = httpx.get(f"{url}/health", headers={"Host": f"evil.example:{port}"}, timeout=30)
        assert rebound.status_code == 400 and "evil.example" in rebound.json()["error"]["message"]
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=30)
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert process.returncode == 0 and "Aborted!" not in stderr, stderr


def test_a_partial_request_header_is_closed_after_the_header_timeout(small_gpt_onnx):
    import socket

    process, url = start_gen_serve(small_gpt_onnx, "--header-timeout", "0.5")
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the rest never comes
            opened = time.monotonic()
            assert slow.recv(1024) == b""  # closed by the server
            assert 0.4 < time.monotonic() - opened < 3
        with socket.create_connection(("127.0.0.1", port), timeout=10) as prompt:
            prompt.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a whole header in time
            assert prompt.recv(1024).startswith(b"HTTP/1.1 200 ")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, process.stderr.read()


def test_gen_serve_says_what_is_wrong_in_one_line(small_gpt_onnx, tmp_path):
    from click.testing import CliRunner

    from gen.core.cli import cli
    from gen.runtime.server import listening_socket

    missing = CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing.onnx")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ") and missing.output.count("\n") == 1
    taken = listening_socket("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        in_use = CliRunner().invoke(cli, ["serve", str(small_gpt_onnx), "--port", port])
    finally:
        taken.close()
    assert in_use.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in in_use.output, in_use.output
    empty = tmp_path / "no-keys"
    empty.write_text("\n")
    no_keys = CliRunner().invoke(cli, ["serve", str(small_gpt_onnx), "--api-key-file", str(empty)])
    assert no_keys.exit_code == 1 and "holds no key" in no_keys.output and no_keys.output.count("\n") == 1


def test_the_server_runs_without_torch(small_gpt_onnx, tmp_path):
    script = f"""
import sys
sys.modules["torch"] = None  # from here on, `import torch` raises ImportError
sys.path.insert(0, {os.path.dirname(__file__)!r})
import httpx
from serve_helpers import running_server
from gen.runtime.onnx_model import OnnxModel
from gen.runtime.server import create_app

with running_server(create_app(OnnxModel({str(small_gpt_onnx)!r}))) as url:
    response = httpx.post(url + "/v1/completions", json={{"prompt": "ROMEO:", "max_tokens": 5, "seed": 1}}, timeout=30)
    assert response.status_code == 200, response.text
    assert httpx.get(url + "/v1/samplers", timeout=30).status_code == 200
torch_modules = [name for name in sys.modules if name == "torch" or name.startswith("torch.")]
assert torch_modules == ["torch"] and sys.modules["torch"] is None, torch_modules
print("torch-free", response.json()["choices"][0]["text"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("torch-free ")


def test_an_export_with_a_fixed_capacity_cache_is_refused_in_one_line(make_gpt, tokenizer, tmp_path):
    from gen.core.errors import GenError
    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model

    path = tmp_path / "static.onnx"
    export_model(make_gpt(tokenizer.vocab_size), path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(static_cache=True, verify=False, progress=None))
    with pytest.raises(GenError, match="fixed-capacity cache .* which gen serve cannot batch"):
        Scheduler(OnnxModel(path))


class Received:
    def __init__(self):
        self.events = []

    def deliver(self, event):
        self.events.append(event)


def test_the_inbox_delivers_every_event_in_order_and_wakes_the_loop_after_a_pause():
    async def main():
        inbox = Inbox(asyncio.get_running_loop())
        received = Received()

        def scheduler_thread(first, count):
            for i in range(first, first + count):
                inbox.publish([(received, Piece(0, str(i), None, 0.0))])
                inbox.publish([])  # a step without events
                time.sleep(0.0002)

        for burst, first in enumerate((0, 1000), start=1):  # a burst, a pause of several intervals, a burst
            thread = threading.Thread(target=scheduler_thread, args=(first, 300))
            thread.start()
            await asyncio.to_thread(thread.join)
            for _ in range(250):  # at most a second
                if len(received.events) == 300 * burst:
                    break
                await asyncio.sleep(Inbox.POLL_SECONDS)
            await asyncio.sleep(5 * Inbox.POLL_SECONDS)
            assert not inbox.collecting  # nothing came for an interval: it stopped polling
        return received.events

    texts = [int(event.text) for event in asyncio.run(main())]
    assert texts == [*range(300), *range(1000, 1300)]


def test_the_inbox_sends_the_end_of_a_request_at_once_not_at_its_next_collection():
    async def main():
        inbox = Inbox(asyncio.get_running_loop())
        inbox.POLL_SECONDS = 30  # a collection that would come far too late
        received = Received()
        inbox.publish([(received, Piece(0, "a", None, 0.0))])  # the loop was idle: woken at once
        for _ in range(200):
            if received.events:
                break
            await asyncio.sleep(0.01)
        inbox.publish([(received, Piece(0, "b", None, 0.0))])  # waits for the collection...
        await asyncio.sleep(0.05)
        assert [event.text for event in received.events] == ["a"]
        inbox.publish([(received, Finished(0, "c", "length", 3, 0.0))])  # ...unless a request ends
        for _ in range(200):
            if len(received.events) == 3:
                break
            await asyncio.sleep(0.01)
        return [event.text for event in received.events]

    assert asyncio.run(main()) == ["a", "b", "c"]


# --- a request cannot stall the others -----------------------------------------------------


# The attacker's probe of issue 19: 1 MB, n=64, four stop strings of 260,000 characters.
PROBE_OF_ISSUE_19 = {"prompt": "a", "n": 64, "max_tokens": 16, "stop": ["ab" * 130_000] * 4}


def test_the_largest_request_the_limits_allow_delays_no_other_client(generator):
    """The attacker's probe gets a 400 at once, and a request at every limit of its preparation (n at --max-choices, prompt tokens x n at
    --max-request-prompt-tokens, four stop strings of --max-stop-chars together, logit_bias
    over the whole vocabulary) is prepared on a worker thread: meanwhile a normal client's
    completion takes no more than ~100 ms over its usual time, and /health its usual time (within
    a few steps of the batch). The batch has room for everyone: what is measured is
    preparation, not waiting for room."""
    limits = Limits()
    n = limits.max_choices
    prompt = "a" * min(limits.max_prompt_tokens, limits.max_request_prompt_tokens // n)
    vocab = generator.tokenizer.vocab_size
    hostile = {"prompt": prompt, "n": n, "max_tokens": 100, "seed": 1,
               "stop": ["xy" * (limits.max_stop_chars // 8)] * 4,
               "logit_bias": {str(token): 1 for token in range(min(vocab, limits.max_logit_bias))}}
    normal = {"prompt": "ROMEO:", "max_tokens": 5, "seed": 2}
    app = create_app(generator, max_batch=n + 1, limits=limits)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        def timed(method, path, **options) -> float:
            started = time.perf_counter()
            response = client.request(method, path, **options)
            assert response.status_code == 200, response.text
            return time.perf_counter() - started

        for _ in range(2):  # warm-up
            timed("POST", "/v1/completions", json=normal)
        usual_completion = max(timed("POST", "/v1/completions", json=normal) for _ in range(3))
        usual_health = max(timed("GET", "/health") for _ in range(3))
        answers = {}

        def send(name: str, body: dict) -> None:
            answers[name] = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            answers[name].finished = time.perf_counter()

        senders = [threading.Thread(target=send, args=(name, body))
                   for name, body in (("largest", hostile), ("probe", PROBE_OF_ISSUE_19))]
        for sender in senders:
            sender.start()
        time.sleep(0.005)  # the hostile requests are on their way in
        beside = [timed("POST", "/v1/completions", json=normal) for _ in range(3)]
        health = [timed("GET", "/health") for _ in range(3)]
        measured = time.perf_counter()
        for sender in senders:
            sender.join()
    assert answers["probe"].status_code == 400 and "--max-stop-chars" in answers["probe"].text
    largest = answers["largest"]
    assert largest.status_code == 200 and len(largest.json()["choices"]) == n, largest.text
    assert largest.finished > measured, "the largest request ended before the others were measured beside it"
    assert max(beside) < usual_completion + 0.1, (beside, usual_completion)
    assert max(health) < usual_health + 0.05, (health, usual_health)


@pytest.mark.parametrize("limit,body,param,option", [
    (Limits(max_request_prompt_tokens=100), {"prompt": "a" * 30, "n": 4}, "prompt", "--max-request-prompt-tokens"),
    (Limits(max_stop_chars=10), {"prompt": "a", "stop": ["abcdef", "ghijk"]}, "stop", "--max-stop-chars"),
    (Limits(max_logit_bias=2), {"prompt": "a", "logit_bias": {"1": 1, "2": 1, "3": 1}}, "logit_bias",
     "--max-logit-bias"),
    (Limits(max_choices=3), {"prompt": ["a", "b"], "n": 2}, "n", "--max-choices"),
])
def test_a_request_over_a_work_limit_gets_400_naming_the_limit_and_its_option(generator, limit, body, param,
                                                                               option):
    client = TestClient(create_app(generator, limits=limit))
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and f"gen serve {option}" in error["message"], error
