"""A gen plugin adding `no_repeat_word`: the model never types the same word twice in a row.

It is a filter that reads the text so far (it names a `context` parameter), so it
works on whatever tokenizer the model has: characters, bytes or byte-level BPE.
"""
from itertools import groupby

import numpy as np

from gen.core import GenError, LogitsFilter, hookimpl

# An apostrophe counts as a letter, so "don't" is one word and "don't don't" a repeat.
APOSTROPHES = "'\u2019"
# What a byte-level tokenizer decodes a cut UTF-8 character to: a byte that starts a
# character reads as U+FFFD until the bytes that complete it have been generated.
REPLACEMENT = "\ufffd"
# How many ids of a row the first look at its end decodes; doubled until enough.
FIRST_WINDOW = 16


def is_letter(char: str) -> bool:
    return char.isalpha() or char in APOSTROPHES


def runs(text: str) -> list[tuple[bool, str]]:
    """`text` cut into maximal runs of letters (True) and of non-letters (False)."""
    return [(letters, "".join(chars)) for letters, chars in groupby(text, key=is_letter)]


def finishes_a_repeat(text: str, since: int, fold) -> bool:
    """True if a non-letter at index `since` or later of `text` ends a word that equals
    (after `fold`) the word before it, with only non-letters between the two."""
    previous = None  # the last finished word
    word = None  # the word just read, finished once a non-letter follows it
    position = 0
    for letters, run in runs(text):
        if letters:
            word = fold(run)
        elif word is not None:
            if position >= since and word == previous:
                return True
            previous, word = word, None
        position += len(run)
    return False


def previous_word_start(text: str) -> int | None:
    """Where, in `text` (the decoded end of a row), the word before the one being typed
    starts; None when `text` may hold only part of that word (look further back)."""
    # A last character still being typed byte by byte may turn out to be a letter
    # of the word being typed, so the previous word is the one before that.
    body = text.rstrip(REPLACEMENT)
    pieces = runs(body)
    end = len(body)
    if pieces and pieces[-1][0]:
        end -= len(pieces.pop()[1])  # the word being typed
    if pieces and not pieces[-1][0]:
        end -= len(pieces.pop()[1])  # the non-letters between it and the previous word
    if len(pieces) < 2:
        return None  # no previous word, or nothing before it shows that it is whole
    if len(pieces) == 2 and not pieces[0][1].strip(REPLACEMENT):
        # Only U+FFFD before it at the start of the window: maybe the bytes of a
        # character the window cut in half, so the word may be longer still.
        return None
    return end - len(pieces[-1][1])


class NoRepeatWord(LogitsFilter):
    """Never type the same word twice in a row: forbid the token that would end a repeat.

    A word is a maximal run of letters (`str.isalpha`) and apostrophes; any other
    character is a non-letter. A word is *finished* by the non-letter that follows it,
    and a *repeat* is a word that equals the word before it, with only non-letters
    between them ("the the", "Stop. stop!"); by default case does not count
    (`str.casefold`), with `case_sensitive=True` it does.

    The rule: a token is forbidden when appending its text would finish a repeat, i.e.
    when a non-letter in the token ends a word equal to the word before it. The word
    before may lie in the prompt ("the cat" + " cat" is refused), and a token that
    holds a repeat on its own (" the the ") is always refused. Letters never finish a
    word, so the word being typed can always go on ("the the" -> "the theory"); a
    repeat that the prompt finished itself is not the model's, and stays.

    Tokens are judged by their own decoded text, appended to the decoded end of the
    row. For byte-level tokenizers a byte that starts a multi-byte character decodes
    alone to U+FFFD, a non-letter: so right after a copy of the previous word such a
    byte is refused even if it would have become a letter. When the row ends inside
    a character, candidates that begin by continuing it are judged on the exact
    decoding of the row's end together with the candidate.

    If the rule would leave a row with no possible token (every token it allows was
    already -inf), that row is left as it came: a repeat beats a failed draw.

    Cost: each token is decoded once per generation; then, per row and step, a few
    dozen ids of the row's end are decoded and every token holding a non-letter is
    checked against them in Python (fine for vocabularies of a few thousand).
    """

    def __init__(self, case_sensitive: bool = False):
        if not isinstance(case_sensitive, bool):  # gen parses the CLI's text; this is for Python callers
            raise GenError(f"no_repeat_word needs case_sensitive to be true or false, got {case_sensitive!r}")
        self.case_sensitive = case_sensitive
        self.fold = (lambda word: word) if case_sensitive else str.casefold
        self.pieces = None  # each token's decoded text, filled on the first call

    def filter(self, logits: np.ndarray, context) -> np.ndarray:
        if self.pieces is None:
            self._decode_vocabulary(context.tokenizer, logits.shape[-1])
        filtered = logits.copy()
        for row, ids in enumerate(context.tokens):
            forbidden = self._forbidden(np.asarray(ids), context.tokenizer)
            still_possible = filtered[row] > -np.inf
            still_possible[forbidden] = False
            if forbidden and still_possible.any():
                filtered[row, forbidden] = -np.inf
        return filtered

    def _decode_vocabulary(self, tokenizer, vocab_size: int) -> None:
        # A model may pad its vocabulary past the tokenizer's: those ids have no text.
        known = min(vocab_size, tokenizer.vocab_size)
        self.pieces = [tokenizer.decode([token]) for token in range(known)] + [""] * (vocab_size - known)
        # Only a token holding a non-letter can finish a word.
        self.can_finish = [token for token, piece in enumerate(self.pieces)
                           if any(not is_letter(char) for char in piece)]

    def _forbidden(self, ids: np.ndarray, tokenizer) -> list[int]:
        """The tokens that would finish a repeat after the row `ids`."""
        window, text, start = self._end_of_row(ids, tokenizer)
        # Only the previous word and what follows it matter; judging from there keeps
        # each check short.
        tail = text[start:]
        pending = len(text) - len(text.rstrip(REPLACEMENT))  # a character cut in half?
        forbidden = []
        for token in self.can_finish:
            piece = self.pieces[token]
            if pending and piece.startswith(REPLACEMENT):
                # The candidate may complete the cut character: decode the two together.
                # Everything before the U+FFFD at the end decodes the same as before.
                exact = tokenizer.decode([*window, token])[start:]
                repeat = finishes_a_repeat(exact, len(tail) - pending, self.fold)
            else:
                repeat = finishes_a_repeat(tail + piece, len(tail), self.fold)
            if repeat:
                forbidden.append(token)
        return forbidden

    @staticmethod
    def _end_of_row(ids: np.ndarray, tokenizer) -> tuple[list[int], str, int]:
        """The last ids of the row, their text, and where the previous word starts in it:
        as few ids as hold the word being typed and the whole word before it."""
        size = FIRST_WINDOW
        while True:
            window = ids[-size:].tolist()
            text = tokenizer.decode(window)
            start = previous_word_start(text)
            if start is not None:
                return window, text, start
            if len(window) == len(ids):
                return window, text, 0  # the whole row: nothing further back to find
            size *= 2


@hookimpl
def register_samplers(register):
    register("no_repeat_word", NoRepeatWord)
