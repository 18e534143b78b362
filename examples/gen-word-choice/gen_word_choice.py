"""A gen constraint plugin: the generated text is exactly one word of a list.

    gen run model.onnx --prompt 'Pick: ' ...            # no CLI flag: use the Python API
    OnnxModel(path).generate(["Pick: "], constraint=Constraint("word_choice", "yes,no,maybe"))

A constraint kind is a class built as `cls(value, tokenizer, vocab_size)` that checks its value
(raising gen.core.GenError, one line) and whose `start()` gives one generation's state:
`allowed()` (a bool array over the vocabulary), `complete` and `advance(token)` (see
gen.core.constraints). This one needs no engine: a token is allowed when the text so far and
the token's text still begin one of the words.
"""
from __future__ import annotations

import numpy as np

from gen.core import hookimpl
from gen.core.errors import GenError


@hookimpl
def register_constraints(register):
    register("word_choice", WordChoice)


class WordChoice:
    """One word of a comma-separated list, e.g. 'yes,no,maybe'."""

    def __init__(self, value: str, tokenizer, vocab_size: int):
        self.words = [word.strip() for word in value.split(",") if word.strip()]
        if not self.words:
            raise GenError("word_choice needs a comma-separated list of words, e.g. 'yes,no,maybe'")
        self.token_texts = [tokenizer.decode([token]) for token in range(tokenizer.vocab_size)]
        self.vocab_size = vocab_size

    def start(self) -> "WordState":
        return WordState(self)


class WordState:
    def __init__(self, choice: WordChoice):
        self.choice = choice
        self.text = ""

    @property
    def complete(self) -> bool:
        return self.text in self.choice.words

    def allowed(self) -> np.ndarray:
        allowed = np.zeros(self.choice.vocab_size, dtype=bool)
        for token, piece in enumerate(self.choice.token_texts):
            candidate = self.text + piece
            allowed[token] = bool(piece) and any(word.startswith(candidate) for word in self.choice.words)
        return allowed

    def advance(self, token: int) -> None:
        self.text += self.choice.token_texts[token]
