"""One row's generation policy (gen.core.generation.RowPolicy), sampler recipes parsed once
(gen.core.sampling.SamplerRecipe), the `row_wise` capability that gen serve batches on, and
OnnxModel's GenerationOptions."""
from __future__ import annotations

import numpy as np
import pytest

from gen.core import GenError, LogitsFilter, RowStreams, SamplerRecipe, draw, hookimpl, softmax
from gen.core.generation import GenerationOptions, RowPolicy
from gen.core.registry import get_plugins
from gen.core.sampling import Sampling
from gen.runtime.api import Limits, parse_completion_request, sampler_recipes
from gen.runtime.onnx_model import OnnxModel
from gen.runtime.scheduler import Choice, Finished, Piece, Scheduler


@pytest.fixture(scope="module")
def generator(small_gpt_onnx):
    return OnnxModel(small_gpt_onnx)


# --- the policy of one row ------------------------------------------------------------------


def test_a_row_keeps_its_window_and_slides_half_of_it_when_its_cache_is_full():
    row = RowPolicy([1, 2, 3, 4, 5, 6], block_size=4, uses_cache=True, max_tokens=10, chain=None, rng=None,
                    keep_text=False)
    assert row.window == [3, 4, 5, 6] and not row.slide_due
    assert row.accept(7) == ("", None)
    assert row.slide_due
    row.slide()
    assert row.window == [6, 7] and not row.slide_due


def test_without_a_cache_a_row_never_slides_and_feeds_its_last_block_size_tokens():
    row = RowPolicy([1, 2, 3], block_size=4, uses_cache=False, max_tokens=10, chain=None, rng=None, keep_text=False)
    for token in (4, 5, 6):
        row.accept(token)
    assert row.window == [3, 4, 5, 6] and not row.slide_due


def test_a_row_ends_once_with_stop_or_length(tokenizer):
    prompt = tokenizer.encode("ab")
    stopped = RowPolicy(prompt, 64, True, max_tokens=10, chain=None, rng=None, tokenizer=tokenizer, stop=["e"])
    pieces = [stopped.accept(token) for token in tokenizer.encode("hee")]
    assert pieces == [("h", None), ("", "stop"), ("", None)]  # a batch draws on for its other rows
    assert stopped.done and stopped.close() == ""
    limited = RowPolicy(prompt, 64, True, max_tokens=2, chain=None, rng=None, tokenizer=tokenizer)
    assert [limited.accept(token)[1] for token in tokenizer.encode("hi")] == [None, "length"]
    assert limited.count == 2 and limited.done


def test_an_empty_prompt_is_refused():
    with pytest.raises(GenError, match="at least one token"):
        RowPolicy([], 8, True, 5, chain=None, rng=None, keep_text=False)


# --- random streams and the row_wise capability -------------------------------------------


def test_row_streams_give_each_row_what_its_own_generator_draws():
    logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    together = draw(softmax(logits), RowStreams([np.random.default_rng(seed) for seed in (1, 2, 3)]))
    alone = [draw(softmax(logits[i:i + 1]), np.random.default_rng(seed))[0] for i, seed in enumerate((1, 2, 3))]
    assert together.tolist() == alone
    with pytest.raises(GenError, match="asked for 2 random numbers for 3 rows"):
        RowStreams([np.random.default_rng(0)] * 3).random(2)


def test_rows_share_a_chain_only_when_every_sampler_declares_row_wise():
    same = Sampling(["top_k:k=5", "temperature:t=0.5"]), Sampling(["top_k: k=5", "temperature:t=.5"])
    assert same[0].row_wise_key == same[1].row_wise_key
    assert Sampling(["top_k:k=5"]).row_wise_key != Sampling(["top_k:k=6"]).row_wise_key
    assert Sampling([], {3: -1.0}).row_wise_key != Sampling([]).row_wise_key
    assert Sampling(["top_k:k=5"]).new().row_wise
    for stateful_or_contextual in (["mirostat"], ["penalties:presence=0.5"], ["top_k:k=5", "no_repeat_ngram"]):
        sampling = Sampling(stateful_or_contextual)
        assert sampling.row_wise_key is None and not sampling.new().row_wise
    # A sampler object handed in is used as it is, state and all: never shared.
    assert Sampling.of(Sampling(["greedy"]).new()).row_wise_key is None


class Sharpen(LogitsFilter):
    """Double the logits (a third-party filter that declares it is row-wise)."""

    row_wise = True
    rows_seen: list[int] = []  # how many rows each call got

    def __init__(self, factor: float = 2.0):
        self.factor = np.float32(factor)

    def filter(self, logits):
        type(self).rows_seen.append(len(logits))
        return logits * self.factor


class SharpenOneByOne(Sharpen):
    """The same filter without the declaration."""

    row_wise = False
    rows_seen: list[int] = []


class SharpenPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("sharpen", Sharpen)
        register("sharpen_one_by_one", SharpenOneByOne)


PROMPTS = ["ROMEO:", "\n", "First Citizen:\nBefore we proceed any further, hear me speak.", "a"]


def serve(generator, samplings, max_tokens=25):
    """Each (prompt, sampling) with seed k, submitted before the scheduler starts so that they run
    side by side; returns the texts."""
    texts = [""] * len(samplings)
    finished = []

    def collect(k):
        def deliver(event):
            assert isinstance(event, (Piece, Finished)), event
            texts[k] += event.text
            if isinstance(event, Finished):
                finished.append(k)
        return deliver

    scheduler = Scheduler(generator, max_batch=8)
    for k, sampling in enumerate(samplings):
        scheduler.submit([Choice(generator.tokenizer.encode(PROMPTS[k % len(PROMPTS)]), sampling, k, max_tokens)],
                         collect(k))
    scheduler.start()
    scheduler.stop(timeout=60)
    assert sorted(finished) == list(range(len(samplings)))
    return texts


def test_a_third_party_row_wise_filter_is_sampled_in_one_call_and_each_text_equals_its_text_alone(
        generator, fresh_plugins, monkeypatch):
    get_plugins().register(SharpenPlugin(), "gen-sharpen")
    specs = {"sharpen": ["sharpen:factor=1.5", "top_k:k=8"], "sharpen_one_by_one": ["sharpen_one_by_one:factor=1.5"]}
    samplings = {name: [Sampling(chain) for _ in range(4)] for name, chain in specs.items()}
    assert samplings["sharpen"][0].row_wise_key is not None and samplings["sharpen_one_by_one"][0].row_wise_key is None

    # Specs are parsed once, into recipes: the scheduler never parses one again.
    def no_parsing(*args):
        raise AssertionError("a spec was parsed again")

    with monkeypatch.context() as patch:
        patch.setattr("gen.core.sampling.parse_spec", no_parsing)
        Sharpen.rows_seen.clear()
        SharpenOneByOne.rows_seen.clear()
        texts = {name: serve(generator, group) for name, group in samplings.items()}
    assert max(Sharpen.rows_seen) == 4  # the four rows drew in one call
    assert max(SharpenOneByOne.rows_seen) == 1  # without the declaration, each row alone
    for name, chain in specs.items():
        for k, text in enumerate(texts[name]):
            prompt = PROMPTS[k % len(PROMPTS)]
            assert text == generator.generate([prompt], sampler=chain, seed=k, max_new_tokens=25)[0], (name, k)


# --- the API builds recipes from typed fields -------------------------------------------------


def test_the_api_turns_openai_fields_into_typed_recipes_without_spec_text(generator, monkeypatch):
    def no_parsing(*args):
        raise AssertionError("a typed field went through spec text")

    monkeypatch.setattr("gen.core.sampling.parse_spec", no_parsing)
    recipes = sampler_recipes({"temperature": 0.5, "top_p": 0.9, "presence_penalty": 0.5}, Limits())
    assert [(recipe.name, dict(recipe.options)) for recipe in recipes] == [
        ("penalties", {"presence": 0.5, "frequency": 0.0}), ("temperature", {"t": 0.5}), ("top_p", {"p": 0.9})]
    request = parse_completion_request({"prompt": "ROMEO:", "temperature": 0}, generator.tokenizer,
                                       generator.vocab_size, Limits())
    assert request.sampler == ["greedy"]
    request = parse_completion_request({"prompt": "ROMEO:", "temperature": 0.5, "frequency_penalty": 1},
                                       generator.tokenizer, generator.vocab_size, Limits())
    # The response's `sampler` field shows the chain as spec text, as before.
    assert request.sampler == ["penalties:presence=0.0,frequency=1.0", "temperature:t=0.5"]


def test_a_recipe_checks_its_options_against_the_plugins_signature_once():
    recipe = SamplerRecipe.parse("top_k:k=40")
    assert (recipe.name, dict(recipe.options), recipe.spec) == ("top_k", {"k": 40}, "top_k:k=40")
    assert recipe.provider == "gen"
    assert SamplerRecipe.of("top_p", p=0.5).spec == "top_p:p=0.5"
    with pytest.raises(GenError, match="unknown option 'q' for sampler 'top_k'"):
        SamplerRecipe.of("top_k", q=3)
    with pytest.raises(GenError, match="top_k needs k >= 1"):
        Sampling([SamplerRecipe.of("top_k", k=0)])  # the plugin's own range check, before any output


# --- OnnxModel's options object ---------------------------------------------------------------


def test_generation_options_give_what_the_separate_arguments_give(generator):
    assert generator.generate(["A"], sampler="greedy", max_new_tokens=10, seed=1)[0] == "".join(
        generator.stream("A", "greedy", max_new_tokens=10))
    options = GenerationOptions(sampler=["top_k:k=5"], max_new_tokens=30, seed=3, stop="\n", logit_bias={4: -1.0})
    expected = generator.generate(["ROMEO:"], sampler=["top_k:k=5"], max_new_tokens=30, seed=3, stop="\n",
                                  logit_bias={4: -1.0})
    assert generator.generate(["ROMEO:"], options=options) == expected
    assert "".join(generator.stream("ROMEO:", options=options)) == expected[0]
    assert "".join(token.text for token in generator.tokens("ROMEO:", options=options)) == expected[0]
    with pytest.raises(GenError, match="either one by one or as options="):
        generator.generate(["ROMEO:"], sampler="greedy", options=options)
