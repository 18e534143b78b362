"""Tests for the plugin, in-process: `pytest examples/gen-no-repeat-word` from gen's repository."""
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gen_no_repeat_word
from gen.core import GenError, SamplingContext
from gen.core.cli import cli
from gen.core.registry import get_plugins, reset_plugins
from gen.core.sampling import build_sampler_chain
from gen.plugins.tokenizers import ByteTokenizer, CharTokenizer
from gen_no_repeat_word import NoRepeatWord

CHAR_TEXT = "the cat sat on a mat, Cat! don't.\n"
CHAR_NON_LETTERS = {" ", ",", "!", ".", "\n"}  # the apostrophe counts as a letter
# Alone, a byte of 0x80 or more is part of a multi-byte character and decodes to U+FFFD.
BYTE_NON_LETTERS = {byte for byte in range(256) if byte >= 0x80 or not (chr(byte).isalpha() or byte == ord("'"))}


class MergedBytes:
    """A byte-level tokenizer with a few merged tokens, as byte-level BPE makes them,
    among which some that finish a multi-byte character and then go on ("\\xa9 " is
    the end of "é" and a space)."""

    MERGES = [b"\xa9 ", b"\xa9.", b"caf", b" caf", b"\xc3\xa9", b" a a ", b". "]

    def __init__(self):
        self.pieces = [bytes([byte]) for byte in range(256)] + self.MERGES
        self.vocab_size = len(self.pieces)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return b"".join(self.pieces[token] for token in ids).decode("utf-8", errors="replace")


@pytest.fixture
def registered():
    """gen's plugins with this module registered, as if the package were installed."""
    reset_plugins()
    plugins = get_plugins()
    if not plugins.is_registered(gen_no_repeat_word):  # already loaded when the package is installed
        plugins.register(gen_no_repeat_word, "gen-no-repeat-word")
    yield
    reset_plugins()  # the next test starts from the installed plugins only


def context_for(tokenizer, rows, prompt_lengths=None, step=0):
    """A SamplingContext for rows given as lists of ids."""
    tokens = [np.array(row, dtype=np.int64) for row in rows]
    lengths = prompt_lengths if prompt_lengths is not None else [len(row) for row in tokens]
    return SamplingContext(tokens=tokens, prompt_lengths=lengths, step=step, tokenizer=tokenizer)


def forbidden_after_ids(tokenizer, row):
    """The set of ids that `no_repeat_word` forbids after the ids `row`."""
    logits = np.zeros((1, tokenizer.vocab_size), dtype=np.float32)
    filtered = NoRepeatWord().filter(logits, context_for(tokenizer, [row]))
    return [set(np.flatnonzero(filtered[0] == -np.inf).tolist())]


def forbidden_after(tokenizer, texts, prompt_lengths=None, **options):
    """For each text, the set of ids that `no_repeat_word` forbids next."""
    rows = [tokenizer.encode(text) for text in texts]
    logits = np.zeros((len(rows), tokenizer.vocab_size), dtype=np.float32)
    filtered = NoRepeatWord(**options).filter(logits, context_for(tokenizer, rows, prompt_lengths))
    assert np.all((filtered == 0) | (filtered == -np.inf))  # forbids, never reweighs
    return [set(np.flatnonzero(row == -np.inf).tolist()) for row in filtered]


def repeats(text: str, since: int = 0) -> list[str]:
    """The words of `text` that repeat the word before them, case-insensitively, and
    whose ending non-letter is at index `since` or later (written apart from the plugin)."""
    found, finished, word = [], [], ""
    for index, char in enumerate(text):
        if char.isalpha() or char in "'\u2019":
            word += char
            continue
        if word:
            if finished and finished[-1] == word.casefold() and index >= since:
                found.append(word)
            finished.append(word.casefold())
            word = ""
    return found


def test_repeats_finds_what_the_tests_look_for():
    assert repeats("The the end.") == ["the"]
    assert repeats("a cat, cat\n") == ["cat"]
    assert repeats("don't don't ") == ["don't"]
    assert repeats("the the") == []  # the second word is not finished
    assert repeats("the theory ok") == []
    assert repeats("x x y y ", since=4) == ["y"]


def test_gen_plugins_lists_no_repeat_word(registered):
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert ["sampler", "no_repeat_word", "gen-no-repeat-word"] in [row[:3] for row in rows]
    assert "case_sensitive (bool=False)" in result.output


@pytest.mark.parametrize("text, finishes_a_repeat", [
    ("the cat cat", True),
    ("the cat Cat", True),  # case does not count by default
    ("cat, cat", True),  # any non-letters may separate the two
    ("cat.\n\ncat", True),
    ("don't don't", True),  # an apostrophe is a letter
    ("the cat ca", False),  # a non-letter now would finish "ca", not "cat"
    ("cat cats", False),
    ("don't don", False),
    ("a cat a", False),  # only the word just before counts
    ("cat", False),  # no previous word
    ("cat cat ", False),  # already finished: not the next token's doing
    ("", False),
])
def test_char_tokenizer_forbids_exactly_the_non_letters_that_finish_a_repeat(text, finishes_a_repeat):
    tokenizer = CharTokenizer.train(CHAR_TEXT)
    [forbidden] = forbidden_after(tokenizer, [text])
    non_letters = {tokenizer.encode(char)[0] for char in CHAR_NON_LETTERS}
    assert forbidden == (non_letters if finishes_a_repeat else set())


def test_case_sensitive_tells_cat_from_Cat():
    tokenizer = CharTokenizer.train(CHAR_TEXT)
    non_letters = {tokenizer.encode(char)[0] for char in CHAR_NON_LETTERS}
    assert forbidden_after(tokenizer, ["the cat Cat", "the cat cat"], case_sensitive=True) == [set(), non_letters]


def test_rows_of_a_batch_are_judged_apart_and_the_previous_word_may_be_in_the_prompt():
    tokenizer = CharTokenizer.train(CHAR_TEXT)
    non_letters = {tokenizer.encode(char)[0] for char in CHAR_NON_LETTERS}
    texts = ["the cat cat", "the cat ca", "the cat cat", "the mat cat cat "]
    # Row 0 generated " cat" after the prompt "the cat"; row 2 was given "the cat cat"
    # whole, and its next token would still finish the repeat; row 3's prompt
    # finished its repeat itself, which is not the model's to avoid.
    prompt_lengths = [len("the cat"), len("the cat ca"), len("the cat cat"), len("the mat cat cat ")]
    assert forbidden_after(tokenizer, texts, prompt_lengths) == [non_letters, set(), non_letters, set()]


def test_a_row_is_never_left_without_a_token():
    tokenizer = CharTokenizer.train(CHAR_TEXT)
    rows = [tokenizer.encode("the cat cat")] * 2
    logits = np.zeros((2, tokenizer.vocab_size), dtype=np.float32)
    letters = [token for token in range(tokenizer.vocab_size) if tokenizer.decode([token]) not in CHAR_NON_LETTERS]
    logits[0, letters] = -np.inf  # an earlier filter left row 0 only non-letters
    before = logits.copy()
    filtered = NoRepeatWord().filter(logits, context_for(tokenizer, rows))
    np.testing.assert_array_equal(logits, before)  # the input is not changed in place
    np.testing.assert_array_equal(filtered[0], before[0])  # left as it came
    assert set(np.flatnonzero(filtered[1] == -np.inf)) == {tokenizer.encode(c)[0] for c in CHAR_NON_LETTERS}


@pytest.mark.parametrize("text", ["the the", "The THE", "café café", "noël\tNOËL", "é é"])
def test_byte_tokenizer_forbids_every_non_letter_byte_after_a_copy(text):
    assert forbidden_after(ByteTokenizer(), [text]) == [BYTE_NON_LETTERS]


@pytest.mark.parametrize("text", ["the th", "café caf", "the cat", "the the "])
def test_byte_tokenizer_forbids_nothing_where_no_repeat_is_near(text):
    assert forbidden_after(ByteTokenizer(), [text]) == [set()]


@pytest.mark.parametrize("length", range(1, 40))
def test_long_words_of_multi_byte_letters_are_read_whole(length):
    # The filter decodes only the end of a row, a window of ids that can begin in the
    # middle of a character; over these lengths it does somewhere. The previous word
    # must still be read whole: "ébb…b bb…b" is no repeat, "éé…é éé…é" is one.
    tokenizer = ByteTokenizer()
    no_repeat = "é" + "b" * length + " " + "b" * length
    repeat = "x " + "é" * length + " " + "é" * length
    assert forbidden_after(tokenizer, [no_repeat, repeat]) == [set(), BYTE_NON_LETTERS]


def test_merged_byte_tokens_that_finish_a_cut_character():
    tokenizer = MergedBytes()
    ids = {piece: tokenizer.pieces.index(piece) for piece in tokenizer.MERGES}
    # "café caf" and the first byte of "é": "\xa9 " would make "café café ".
    row = tokenizer.encode("café caf") + [0xC3]
    [forbidden] = forbidden_after_ids(tokenizer, row)
    assert ids[b"\xa9 "] in forbidden and ids[b"\xa9."] in forbidden
    assert 0xA9 not in forbidden  # "café café" goes on: the word is not finished yet
    assert ids[b"caf"] not in forbidden
    # After "café café", a token holding a whole repeat is refused, and so is 0xC3:
    # until its character is complete it reads as U+FFFD, a non-letter (documented).
    [forbidden] = forbidden_after_ids(tokenizer, tokenizer.encode("café café"))
    assert {0xC3, ord(" "), ids[b". "], ids[b" caf"]} <= forbidden
    assert ord("s") not in forbidden and ids[b"caf"] not in forbidden
    [forbidden] = forbidden_after_ids(tokenizer, tokenizer.encode("the "))
    assert forbidden == {ids[b" a a "]}  # " a a " holds a repeat on its own



# Tokenizers for the property test, each with the pieces random logits favour, so
# that short words come often and repeats would be common without the filter.
def char_setup():
    tokenizer = CharTokenizer.train("ab A'.\n")
    return tokenizer, list(range(tokenizer.vocab_size)), "ab A'.\n"


def byte_setup():
    favoured = list("ab é.".encode("utf-8"))
    return ByteTokenizer(), favoured, "ab é."


def merged_setup():
    # Mostly "é" and tokens that finish it and go on, so that rows often end inside a
    # character whose completing token also finishes the word.
    tokenizer = MergedBytes()
    favoured = list("é .".encode("utf-8")) + list(range(256, tokenizer.vocab_size))
    return tokenizer, favoured, "é c."


SETUPS = {"char": char_setup, "byte": byte_setup, "merged": merged_setup}


def generate(samplers, tokenizer, favoured, prompts, steps, seed):
    """Drive a sampler chain by hand, as gen's generators do, with random logits."""
    chain = build_sampler_chain(samplers)  # a new instance for each generation
    rng = np.random.default_rng(seed)
    rows = [np.array(tokenizer.encode(prompt), dtype=np.int64) for prompt in prompts]
    prompt_lengths = [len(row) for row in rows]
    bias = np.zeros(tokenizer.vocab_size, dtype=np.float32)
    bias[favoured] = 8.0  # most of the mass, while every token stays possible
    for step in range(steps):
        logits = (rng.normal(size=(len(rows), tokenizer.vocab_size)) * 1.5 + bias).astype(np.float32)
        context = SamplingContext(tokens=rows, prompt_lengths=prompt_lengths, step=step, tokenizer=tokenizer)
        next_ids = chain(logits, rng, context)
        rows = [np.append(row, token) for row, token in zip(rows, next_ids)]
    return [tokenizer.decode(row.tolist()) for row in rows]


@pytest.mark.parametrize("kind", SETUPS)
def test_without_the_filter_the_same_generation_repeats_words(registered, kind):
    # Shows that the property test below would catch a filter that does nothing.
    tokenizer, favoured, _ = SETUPS[kind]()
    texts = generate(["temperature:t=1.5"], tokenizer, favoured, ["", ""], steps=200, seed=0)
    assert any(repeats(text) for text in texts)


@pytest.mark.parametrize("kind", SETUPS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_real_chain_never_finishes_a_repeated_word(registered, kind, data):
    tokenizer, favoured, alphabet = SETUPS[kind]()
    prompts = data.draw(st.lists(st.text(alphabet, max_size=12), min_size=1, max_size=3), label="prompts")
    steps = data.draw(st.integers(1, 60), label="steps")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    texts = generate(["no_repeat_word", "temperature:t=1.5"], tokenizer, favoured, prompts, steps, seed)
    for prompt, text in zip(prompts, texts):
        assert text.startswith(prompt)
        # Repeats the prompt finished itself are not the model's.
        assert repeats(text, since=len(prompt)) == [], text


@pytest.mark.parametrize("spec, message", [
    ("no_repeat_word:case_sensitive=maybe", "case_sensitive"),
    ("no_repeat_word:colour=red", "accepted options: case_sensitive"),
])
def test_a_bad_option_is_a_one_line_error(registered, spec, message):
    with pytest.raises(GenError, match=message) as error:
        build_sampler_chain([spec])
    assert "\n" not in str(error.value)


def test_a_bad_option_from_python_is_a_one_line_error():
    with pytest.raises(GenError, match="case_sensitive to be true or false, got 'yes'") as error:
        NoRepeatWord(case_sensitive="yes")
    assert "\n" not in str(error.value)
