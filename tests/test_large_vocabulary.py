"""A 50,257-token vocabulary (GPT-2's): the samplers' partition-based paths give exactly what
the plain sorted implementations they replaced give (written out here as references), on
random logits with ties and -inf entries, so a seed draws the same tokens as before; and text
decoded a token at a time equals the whole decode, for every kind of tokenizer."""
import json
from pathlib import Path

import numpy as np
import pytest

from gen.core import SamplingContext, log_softmax, mask_beyond_mass, mask_logits, softmax, token_counts
from gen.core.generation import token_choices
from gen.core.sampling import build_sampler, build_sampler_chain, draw_from_logits, largest, largest_unordered
from gen.core.scoring import token_scores
from gen.core.tokenizer import TextStream
from gen.plugins.hf_tokenizers import HFTokenizer
from gen.plugins.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer

VOCAB = 50_257
BATCH = 3


def logits_case(kind: str, seed: int = 0) -> np.ndarray:
    """(BATCH, VOCAB) float32 logits of one kind: plain, with many ties, mostly -inf (as after an
    earlier filter), or with fewer finite entries than top_k's k."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((BATCH, VOCAB)) * 3).astype(np.float32)
    if kind == "ties":
        logits = np.round(logits)  # a few distinct values, each shared by thousands of ids
    elif kind == "masked":
        logits[rng.random(logits.shape) < 0.9] = -np.inf
    elif kind == "few finite":
        finite = logits[:, :7].copy()
        logits[:] = -np.inf
        logits[:, rng.choice(VOCAB, 7, replace=False)] = finite
    elif kind == "peaked":  # one token takes nearly all the mass: top-p stops at the first candidates
        logits[:, 123] = 40.0
    logits[np.arange(BATCH), logits.argmax(axis=-1)] = np.maximum(logits.max(axis=-1), 0)  # never a whole -inf row
    return logits


KINDS = ["plain", "ties", "masked", "few finite", "peaked"]


# --- the references: the whole-vocabulary sorts gen used before --------------------------


def sorted_first(values: np.ndarray) -> np.ndarray:
    return np.argsort(-values, axis=-1, kind="stable")


def reference_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    remove = np.ones(logits.shape, dtype=bool)
    np.put_along_axis(remove, sorted_first(logits)[:, :min(k, logits.shape[-1])], False, axis=-1)
    return mask_logits(logits, remove)


def reference_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    probs = softmax(logits)
    return mask_beyond_mass(logits, probs, sorted_first(probs), p)


def reference_draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cumulative = np.cumsum(probs, axis=-1)
    uniforms = rng.random(probs.shape[0]) * cumulative[:, -1]
    ids = (cumulative <= uniforms[:, None]).sum(axis=-1)
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


def history(seed: int = 0) -> SamplingContext:
    """Rows of a few hundred ids from the whole vocabulary, with repeats, each with its prompt."""
    rng = np.random.default_rng(seed)
    rows = [rng.choice(rng.integers(0, VOCAB, 40), size=length) for length in (1, 150, 400)]
    return SamplingContext(rows, [1, 50, 100], 0, None)


# --- each fast path against its reference ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_largest_is_the_head_of_a_stable_sort(kind):
    logits = logits_case(kind)
    for k in (1, 2, 40, 1000, VOCAB - 1, VOCAB):
        head = sorted_first(logits)[:, :k]
        np.testing.assert_array_equal(largest(logits, k), head, err_msg=f"k={k}")
        np.testing.assert_array_equal(np.sort(largest_unordered(logits, k), axis=-1), np.sort(head, axis=-1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 40, 5000])
def test_top_k_equals_the_sorted_implementation(kind, k):
    logits = logits_case(kind)
    np.testing.assert_array_equal(build_sampler(f"top_k:k={k}").filter(logits), reference_top_k(logits, k))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", [0.1, 0.9, 0.999])
def test_top_p_equals_the_sorted_implementation(kind, p):
    logits = logits_case(kind)
    np.testing.assert_array_equal(build_sampler(f"top_p:p={p}").filter(logits), reference_top_p(logits, p))


@pytest.mark.parametrize("kind", KINDS + ["underflowing"])
def test_drawing_from_the_finite_entries_draws_what_the_dense_draw_did(kind):
    logits = logits_case("plain" if kind == "underflowing" else kind)
    for k in (1, 40, 3000, VOCAB):  # the dense draw past VOCAB // 8 finite entries
        kept = reference_top_k(logits, k)
        if kind == "underflowing":  # entries whose exponential is 0 in float32, though finite
            kept[:, :100] = np.where(np.isfinite(kept[:, :100]), np.float32(-300), kept[:, :100])
        for seed in range(10):
            expected = reference_draw(softmax(kept), np.random.default_rng(seed))
            np.testing.assert_array_equal(draw_from_logits(kept, np.random.default_rng(seed)), expected,
                                          err_msg=f"k={k} seed={seed}")


@pytest.mark.parametrize("kind", KINDS)
def test_a_top_k_temperature_chain_draws_what_the_sorted_one_drew(kind):
    logits = logits_case(kind)
    for seed in range(10):
        chain = build_sampler_chain(["top_k:k=40", "temperature:t=0.8"])
        expected = reference_draw(softmax(reference_top_k(logits, 40) / np.float32(0.8)), np.random.default_rng(seed))
        np.testing.assert_array_equal(chain(logits, np.random.default_rng(seed)), expected)


@pytest.mark.parametrize("kind", ["plain", "masked"])
def test_penalties_touch_only_the_ids_of_the_text(kind):
    logits, context = logits_case(kind), history()
    repetition = build_sampler("repetition_penalty:penalty=1.3").filter(logits, context)
    seen = token_counts(context.tokens, VOCAB) > 0
    expected = np.where(seen, np.where(logits > 0, logits / np.float32(1.3), logits * np.float32(1.3)), logits)
    np.testing.assert_array_equal(repetition, expected.astype(np.float32))

    openai = build_sampler("penalties:presence=0.5,frequency=0.25").filter(logits, context)
    counts = token_counts([context.generated(row) for row in range(BATCH)], VOCAB).astype(np.float32)
    np.testing.assert_array_equal(openai, logits - np.float32(0.25) * counts - np.float32(0.5) * (counts > 0))


@pytest.mark.parametrize("kind", ["plain", "ties"])
def test_logprob_alternatives_are_the_sorted_most_likely(kind):
    logits = logits_case(kind)
    filtered = reference_top_k(logits, 40)
    ids = np.array([int(np.argmax(row)) for row in filtered])
    characters = CharTokenizer("".join(chr(0x100 + i) for i in range(VOCAB)))  # one character per id
    choices = token_choices(logits, filtered, ids, 20, characters)
    model = log_softmax(logits)
    for row, choice in enumerate(choices):
        assert [alternative.id for alternative in choice.top] == sorted_first(model)[row, :20].tolist()
        assert [alternative.logprob for alternative in choice.top] == model[row, sorted_first(model)[row, :20]].tolist()

    sequence = np.random.default_rng(1).integers(0, VOCAB, 9)
    scores = token_scores(lambda ids: logits[:1, None, :].repeat(ids.shape[1], axis=1).repeat(len(ids), axis=0),
                          sequence, block_size=4, top_n=5)
    np.testing.assert_array_equal(scores.top_ids, np.tile(sorted_first(model[:1])[:, :5], (8, 1)))



# --- text, decoded a token at a time -----------------------------------------------------


EXCERPT = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"


def byte_level_hf_tokenizer(text: str) -> HFTokenizer:
    """GPT-2's kind of tokenizer (byte-level BPE) from the tokenizers package, 400 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return HFTokenizer(json.loads(tokenizer.to_str()))


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    text = EXCERPT.read_text(encoding="utf-8")
    return {"char": CharTokenizer.train(text), "byte": ByteTokenizer(), "bpe": BPETokenizer.train(text, vocab_size=400),
            "hf": byte_level_hf_tokenizer(text)}


@pytest.mark.parametrize("name", ["char", "byte", "bpe", "hf"])
def test_text_decoded_a_token_at_a_time_equals_the_whole_decode(tokenizers, name):
    tokenizer = tokenizers[name]
    rng = np.random.default_rng(0)
    multibyte = tokenizer.encode("héllo 世界 👩‍👩‍👧 ok") if name != "char" else []  # characters split across tokens
    for ids in [multibyte] + [rng.integers(0, tokenizer.vocab_size, 300).tolist() for _ in range(5)]:
        stream = TextStream(tokenizer)
        pieces = [stream.push(token) for token in ids] + [stream.flush()]
        assert "".join(pieces) == tokenizer.decode(ids)
    # After a prompt, the stream gives what the prompt's text is followed by in the whole.
    prompt, generated = tokenizer.encode("ROMEO:"), rng.integers(0, tokenizer.vocab_size, 300).tolist()
    stream = TextStream(tokenizer, context=prompt)
    pieces = [stream.push(token) for token in generated] + [stream.flush()]
    assert tokenizer.decode(prompt) + "".join(pieces) == tokenizer.decode(prompt + generated)
