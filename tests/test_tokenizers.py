"""Tests for the built-in tokenizers: char, byte and bpe (gen.plugins.tokenizers)."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gen.core.errors import GenError
from gen.core.data import train_tokenizer
from gen.core.registry import get_registry
from gen.core.tokenizer import TextStream, Tokenizer, tokenizer_from_dict, tokenizer_to_dict
from gen.plugins.tokenizers import (
    PRE_SPLIT,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
)

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"  # its first 59,804 characters

# Strings that have broken tokenizers before: several code points per visible
# character, characters outside the Basic Multilingual Plane, and lone surrogates,
# which `str.encode("utf-8")` refuses but a Python str may hold.
TRICKY_STRINGS = [
    "",
    "a",
    "Hello, world!",
    "日本語のテキスト、中文文本和한국어",
    "👩‍👩‍👧‍👦 family, 👍🏽 thumbs up, 🇫🇷 flag",  # ZWJ sequence, skin tone, regional indicators
    "e\u0301 a\u0300\u0323 Z\u0351\u0362\u036b",  # combining marks
    "\ud800",  # a lone high surrogate
    "x\udfff\ud800y",  # surrogates in the wrong order
    "\ud83d\ude00",  # a surrogate pair held as two code points (not the emoji)
    "tabs\tand\r\nnewlines\n\n\n  trailing   ",
    "\x00\x7f\x80\uffff\U0010ffff",
    "don't we'll they've I'm it's O'RE 'tis",
    "snake_case __dunder__ 3.14159 ½²",
]

# Every str, surrogates included (st.text() alone leaves them out).
ANY_TEXT = st.text() | st.text(st.characters(exclude_categories=()))


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(shakespeare) -> BPETokenizer:
    """A BPE trained on a slice of Shakespeare: big enough to be realistic, fast to train."""
    return BPETokenizer.train(shakespeare[:40_000], vocab_size=512)


# ---------------------------------------------------------------------------
# Reference implementations: the slow, obviously correct textbook algorithms that
# the fast ones must agree with.
# ---------------------------------------------------------------------------


def textbook_train(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """Recount every pair after every merge; take the most frequent, smallest pair on ties."""
    word_counts = Counter(PRE_SPLIT.findall(text))
    words = {tuple(word.encode("utf-8", "surrogatepass")): count for word, count in word_counts.items()}
    merges = []
    while len(merges) < vocab_size - 256:
        pair_counts = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        new_id = 256 + len(merges)
        merges.append(best)
        words = {tuple(textbook_merge(list(word), best, new_id)): count for word, count in words.items()}
    return merges


def textbook_merge(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


def textbook_encode(tokenizer: BPETokenizer, text: str) -> list[int]:
    """Per chunk: merge the lowest-ranked adjacent pair everywhere, until none is left."""
    rank_of = {pair: rank for rank, pair in enumerate(tokenizer.merges)}
    ids = []
    for chunk in PRE_SPLIT.findall(text):
        word = list(chunk.encode("utf-8", "surrogatepass"))
        while len(word) >= 2:
            pair = min(zip(word, word[1:]), key=lambda p: rank_of.get(p, float("inf")))
            if pair not in rank_of:
                break
            word = textbook_merge(word, pair, 256 + rank_of[pair])
        ids.extend(word)
    return ids


# ---------------------------------------------------------------------------
# char
# ---------------------------------------------------------------------------


def test_char_vocabulary_of_the_shakespeare_excerpt_is_its_59_characters(shakespeare):
    tokenizer = CharTokenizer.train(shakespeare)
    assert tokenizer.vocab_size == 59  # the whole of Tiny Shakespeare has 65
    assert tokenizer.characters == "".join(sorted(set(shakespeare)))
    sample = shakespeare[:5000]
    assert tokenizer.decode(tokenizer.encode(sample)) == sample


def test_char_unseen_character_error_names_character_and_position():
    tokenizer = CharTokenizer.train("abc hello")
    with pytest.raises(GenError) as raised:
        tokenizer.encode("hel é")
    assert str(raised.value) == (
        "character 'é' at position 4 is not in the tokenizer's vocabulary of 8 characters"
    )


def test_char_training_on_empty_text_is_an_error():
    with pytest.raises(GenError, match="the corpus is empty"):
        CharTokenizer.train("")


def test_char_round_trips_unusual_characters_it_was_trained_on():
    text = "".join(TRICKY_STRINGS)
    tokenizer = CharTokenizer.train(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


# ---------------------------------------------------------------------------
# byte and bpe round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", TRICKY_STRINGS)
def test_byte_and_bpe_round_trip_tricky_strings(text, bpe):
    for tokenizer in (ByteTokenizer(), bpe):
        assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT)
def test_byte_round_trips_any_string(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT)
def test_bpe_round_trips_any_string(text, bpe):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_byte_tokens_are_the_utf8_bytes():
    assert ByteTokenizer().encode("aé€😀") == list("aé€😀".encode("utf-8"))
    assert ByteTokenizer.train("anything").vocab_size == 256


def test_decoding_a_cut_character_gives_a_replacement_character(bpe):
    cut = list("€".encode("utf-8"))[:2]
    assert ByteTokenizer().decode(cut) == "\ufffd"
    assert bpe.decode(cut) == "\ufffd"


def test_decode_accepts_numpy_ids(bpe):
    # bytes(numpy_array) would read the array's raw memory instead of its values.
    text = "héllo"
    for tokenizer in (ByteTokenizer(), bpe, CharTokenizer.train(text)):
        ids = np.array(tokenizer.encode(text), dtype=np.int64)
        assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("bad_id", [-1, 10_000])
def test_decoding_an_id_outside_the_vocabulary_is_an_error(bad_id, bpe):
    for tokenizer in (ByteTokenizer(), bpe, CharTokenizer.train("abc")):
        with pytest.raises(GenError, match=f"token id {bad_id} is outside"):
            tokenizer.decode([0, bad_id])


# ---------------------------------------------------------------------------
# bpe training and encoding
# ---------------------------------------------------------------------------


def test_bpe_reaches_the_requested_vocabulary_size_and_compresses(shakespeare):
    text = shakespeare[:20_000]
    tokenizer = BPETokenizer.train(text, vocab_size=300)
    assert tokenizer.vocab_size == 300
    assert len(tokenizer.merges) == 44
    ids = tokenizer.encode(text)
    assert len(ids) < 0.75 * len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_bpe_slice_compresses_shakespeare(bpe, shakespeare):
    sample = shakespeare[40_000:]  # text it was not trained on
    assert len(sample) / len(bpe.encode(sample)) > 1.8


def test_bpe_stops_early_when_nothing_is_left_to_merge():
    tokenizer = BPETokenizer.train("aaaa aaaa", vocab_size=1000)
    # "aaaa" -> "aa aa" -> "aaaa"; " aaaa" then needs two more merges; then no pairs remain.
    assert tokenizer.vocab_size < 1000
    assert tokenizer.encode("aaaa aaaa") == [tokenizer.encode("aaaa")[0], tokenizer.encode(" aaaa")[0]]


def test_bpe_training_matches_the_textbook_algorithm(shakespeare):
    text = shakespeare[:3000] + " ééé 日本日本 aaaaaaa"
    assert BPETokenizer.train(text, vocab_size=400).merges == textbook_train(text, 400)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet="the ahe, t'sTH\né日😀", max_size=60) | ANY_TEXT)
def test_bpe_encoding_matches_the_textbook_algorithm(text, bpe):
    assert bpe.encode(text) == textbook_encode(bpe, text)


def test_bpe_encodes_a_long_chunk_like_the_textbook_algorithm():
    # Chinese has no spaces, so a paragraph is one chunk; this exercises the heap encoder.
    text = "我们的语言模型" * 40
    tokenizer = BPETokenizer.train(text * 3, vocab_size=320)
    assert tokenizer.encode(text) == textbook_encode(tokenizer, text)


def test_bpe_training_is_deterministic(shakespeare):
    text = shakespeare[:10_000]
    assert BPETokenizer.train(text, vocab_size=300).merges == BPETokenizer.train(text, vocab_size=300).merges


@pytest.mark.parametrize("vocab_size", [255, 0, -5, 10**9, "512", 512.0, True])
def test_bpe_rejects_a_bad_vocabulary_size(vocab_size):
    with pytest.raises(GenError, match="vocab_size"):
        BPETokenizer.train("some text", vocab_size=vocab_size)


def test_unknown_training_options_are_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(GenError, match="unknown option 'vocab_sise' for tokenizer 'bpe'; accepted options: vocab_size"):
        train_tokenizer("text", "bpe:vocab_sise=300")
    with pytest.raises(GenError, match="unknown option 'vocab_size' for tokenizer 'char'; it takes no options"):
        train_tokenizer("text", "char:vocab_size=300")


def test_tokenizer_options_are_typed_from_the_train_signature(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(GenError, match="tokenizer 'bpe' option vocab_size='3e2' is not a valid int"):
        train_tokenizer("text", "bpe:vocab_size=3e2")
    tokenizer, document = train_tokenizer("some text " * 20, "bpe:vocab_size=0260")
    assert tokenizer.vocab_size == 260 and document["name"] == "bpe"


def test_pre_split_covers_every_character():
    for text in TRICKY_STRINGS:
        assert "".join(PRE_SPLIT.findall(text)) == text
    assert PRE_SPLIT.findall("Hello world's  end\n") == ["Hello", " world", "'s", " ", " end", "\n"]


# ---------------------------------------------------------------------------
# serialisation, the registry, and malformed states
# ---------------------------------------------------------------------------


def all_tokenizers(bpe):
    return [
        ("char", CharTokenizer.train("hello, wörld \ud800")),
        ("byte", ByteTokenizer.train("ignored")),
        ("bpe", bpe),
    ]


def test_state_survives_json_and_rebuilds_an_identical_tokenizer(bpe, shakespeare):
    sample = shakespeare[200_000:210_000] + "é 😀 \ud800"
    for name, tokenizer in all_tokenizers(bpe):
        state = json.loads(json.dumps(tokenizer.to_dict()))
        rebuilt = type(tokenizer).from_dict(state)
        assert rebuilt.vocab_size == tokenizer.vocab_size
        assert rebuilt.to_dict() == tokenizer.to_dict()
        text = sample if name != "char" else "hello, wörld \ud800"
        assert rebuilt.encode(text) == tokenizer.encode(text)
        assert rebuilt.decode(rebuilt.encode(text)) == text


def test_bpe_state_is_a_compact_list_of_id_pairs(bpe):
    state = bpe.to_dict()
    assert list(state) == ["merges"]
    assert len(state["merges"]) == 512 - 256
    assert all(isinstance(pair, list) and len(pair) == 2 for pair in state["merges"])


def test_tokenizers_are_found_through_the_registry():
    registry = get_registry()
    expected = {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer}
    for name, cls in expected.items():
        assert registry.get("tokenizer", name) is cls
        entry = registry.entry("tokenizer", name)
        assert entry.provider == "gen"
        assert entry.description == cls.__doc__.strip().splitlines()[0]
    assert set(expected) <= set(registry.names("tokenizer"))


def test_tokenizers_follow_the_protocol(bpe):
    for _, tokenizer in all_tokenizers(bpe):
        assert isinstance(tokenizer, Tokenizer)


def test_tokenizer_from_dict_rebuilds_by_name(bpe):
    for name, tokenizer in all_tokenizers(bpe):
        document = tokenizer_to_dict(name, tokenizer)
        for stored in (document, json.dumps(document)):
            rebuilt = tokenizer_from_dict(stored)
            assert type(rebuilt) is type(tokenizer)
            assert rebuilt.to_dict() == tokenizer.to_dict()


MALFORMED_STATES = [
    (CharTokenizer, None, "must be a JSON object"),
    (CharTokenizer, {}, "missing 'characters'"),
    (CharTokenizer, {"characters": ""}, "non-empty string"),
    (CharTokenizer, {"characters": ["a", "b"]}, "non-empty string"),
    (CharTokenizer, {"characters": "abca"}, "'a' more than once"),
    (CharTokenizer, {"characters": "ab", "extra": 1}, "unexpected 'extra'"),
    (ByteTokenizer, [], "must be a JSON object"),
    (ByteTokenizer, {"merges": []}, "unexpected 'merges'"),
    (BPETokenizer, {}, "missing 'merges'"),
    (BPETokenizer, {"merges": "104 101"}, "must be a list of \\[id, id\\] pairs"),
    (BPETokenizer, {"merges": [[104, 101], [1, 2, 3]]}, "merge 1 .* is \\[1, 2, 3\\]"),
    (BPETokenizer, {"merges": [["h", "e"]]}, "merge 0 .* pair of token ids"),
    (BPETokenizer, {"merges": [[104, True]]}, "merge 0 .* pair of token ids"),
    (BPETokenizer, {"merges": [[104, 101], [256, 257]]}, "merge 1 .* ids 0 to 256"),
    (BPETokenizer, {"merges": [[-1, 101]]}, "merge 0 .* ids 0 to 255"),
    (BPETokenizer, {"merges": [[104, 101], [104, 101]]}, "merge 1 .* repeats the pair"),
]


@pytest.mark.parametrize("cls, state, message", MALFORMED_STATES)
def test_malformed_state_is_a_clear_error(cls, state, message):
    with pytest.raises(GenError, match=message):
        cls.from_dict(state)


def test_tokenizer_from_dict_reports_a_malformed_bpe_state():
    with pytest.raises(GenError, match="merge 0"):
        tokenizer_from_dict({"name": "bpe", "state": {"merges": [[999, 0]]}})


# ---------------------------------------------------------------------------
# streaming, and the torch line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("make_tokenizer", [ByteTokenizer, "bpe"])
def test_text_stream_turns_byte_tokens_into_whole_characters(make_tokenizer, bpe):
    tokenizer = bpe if make_tokenizer == "bpe" else make_tokenizer()
    text = "héllo 世界 👩‍👩‍👧 done"
    stream = TextStream(tokenizer)
    pieces = [stream.push(token) for token in tokenizer.encode(text)]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    # Characters did arrive over several tokens, and were held back until whole.
    assert "" in pieces[:-1]


def test_plugin_imports_and_works_with_torch_blocked():
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import gen.plugins.tokenizers as t\n"
        "from gen.core.registry import get_registry\n"
        "cls = get_registry().get('tokenizer', 'bpe')\n"
        "tok = cls.train('the cat sat on the mat ' * 20, vocab_size=270)\n"
        "assert tok.decode(tok.encode('the mat')) == 'the mat'\n"
        "assert sys.modules['torch'] is None\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
