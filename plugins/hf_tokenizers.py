"""The `hf` tokenizer: a Hugging Face `tokenizer.json`, run by the `tokenizers` package.

    gen train --data shakespeare --tokenizer hf:path=tokenizer.json

Nothing is learned from the corpus: `train` reads the file, and the whole file
content is the tokenizer's state, so it travels inside checkpoints and exports as
`{"name": "hf", "state": {"tokenizer": <the tokenizer.json object>}}` like the
built-in tokenizers, and an export needs no file beside it.

`tokenizers` is an optional extra (`pip install 'gen[hf]'`), imported only when a
tokenizer of this kind is built: `gen plugins` lists `hf`, and `gen run` works on
exports with other tokenizers, without it.

Text is encoded without the special tokens a post-processor would add (a BOS or
EOS per call), since gen encodes a whole corpus in one call and prompts the same
way; ids are decoded with special tokens kept, so a generated `<|endoftext|>`
shows. A tokenizer with a normalizer (lowercasing, NFKC) or an unknown-token
fallback is lossy: `decode(encode(text))` is the normalised text ("ROMEO" comes back
as "romeo", an unknown character as "<unk>"). gen prints a prompt as it was given
and the generated text as the tokenizer decodes it; `gen.core.TextStream` decodes
each new token after the ones before it, so the spaces that SentencePiece-style
decoders add between tokens come out as in a whole decode.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from gen.core import GenError, hookimpl
from gen.core.errors import first_line
from gen.core.reading import SIZE_LIMITS, parse_json, read_text
from gen.plugins.tokenizers import _check_ids, _check_state


@hookimpl
def register_tokenizers(register):
    register("hf", HFTokenizer)


def _tokenizers_module():
    try:
        import tokenizers
    except ImportError:
        raise GenError(
            "the hf tokenizer needs the tokenizers package: pip install 'gen[hf]' (or pip install tokenizers)"
        ) from None
    return tokenizers


def _is_library_error(error: BaseException) -> bool:
    """The tokenizers package raises its own types, and a Rust panic (seen with some
    pre-tokenizer regexes) as pyo3's PanicException, which derives from BaseException
    so that nothing catches it by accident; both are a bad tokenizer.json, not a bug."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


class HFTokenizer:
    """A Hugging Face tokenizer.json (BPE, WordPiece, Unigram, ...), run by the tokenizers package."""

    # `train` reads a file rather than learning from the corpus: gen builds it afresh
    # each time instead of caching it (see gen.core.data.train_tokenizer).
    learns_from_text = False

    def __init__(self, document: dict):
        tokenizers = _tokenizers_module()
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(document))
        except BaseException as error:
            if not _is_library_error(error):
                raise
            raise GenError(f"the tokenizers package cannot read this tokenizer.json ({first_line(error)})") from None
        self.document = document
        vocabulary = self._tokenizer.get_vocab(with_added_tokens=True)
        if not vocabulary:
            raise GenError("the tokenizer.json has an empty vocabulary")
        self.vocab_size = max(vocabulary.values()) + 1  # ids may have gaps (added tokens)

    @classmethod
    def train(cls, text: str, path: str) -> "HFTokenizer":
        """Read `path`, a tokenizer.json; the corpus `text` is not used."""
        if not os.path.exists(path):
            raise GenError(f"the tokenizer file {path!r} does not exist; give hf:path=PATH/TO/tokenizer.json")
        text = read_text(path, "tokenizer", SIZE_LIMITS["tokenizer"])
        try:
            document = parse_json(text, f"the tokenizer file {path!r}")
        except GenError as error:
            raise GenError(f"{error}: it is not JSON gen can read; give a Hugging Face tokenizer.json") from None
        if not isinstance(document, dict) or "model" not in document:
            raise GenError(f"the tokenizer file {path!r} is not a Hugging Face tokenizer.json (it has no \"model\")")
        return cls(document)

    def encode(self, text: str) -> list[int]:
        try:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        except BaseException as error:
            if not _is_library_error(error):
                raise
            raise GenError(f"the tokenizers package cannot encode with this tokenizer.json ({first_line(error)})") \
                from None

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"tokenizer": self.document}

    @classmethod
    def from_dict(cls, state: dict) -> "HFTokenizer":
        _check_state("hf", state, ["tokenizer"])
        if not isinstance(state["tokenizer"], dict):
            raise GenError('the stored hf tokenizer state is malformed; expected {"tokenizer": <tokenizer.json object>}')
        return cls(state["tokenizer"])

    def __repr__(self) -> str:
        model = self.document.get("model", {}).get("type", "?") if isinstance(self.document.get("model"), dict) else "?"
        return f"HFTokenizer({model}, vocab_size={self.vocab_size})"
