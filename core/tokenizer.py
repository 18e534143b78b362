"""The tokenizer protocol, its serialised form, and incremental decoding (no torch)."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from gen.core.errors import GenError
from gen.core.reading import parse_json


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, state: dict) -> "Tokenizer": ...

    @classmethod
    def train(cls, text: str, **options) -> "Tokenizer": ...


def tokenizer_to_dict(name: str, tokenizer: Tokenizer) -> dict:
    """The form a tokenizer travels in inside checkpoints and ONNX files."""
    return {"name": name, "state": tokenizer.to_dict()}


def tokenizer_from_dict(document: dict | str) -> Tokenizer:
    """Rebuild a tokenizer from `{"name": ..., "state": ...}` (a dict or its JSON)."""
    from gen.core.registry import get_registry

    if isinstance(document, str):
        document = parse_json(document, "the stored tokenizer")
    if not isinstance(document, dict) or "name" not in document or "state" not in document:
        raise GenError('the stored tokenizer must be {"name": ..., "state": ...}')
    cls = get_registry().get("tokenizer", document["name"])
    return cls.from_dict(document["state"])


class TextStream:
    """Turns token ids, pushed one at a time, into pieces of text as they become whole.

    Each push decodes a short window: the new ids after the ids of the piece before
    them (at the start, the last ids of the prompt), and emits what the new ids add
    to the text of those before. That handles two things:

    - Byte-level tokens can split a character: while the text ends in a replacement
      character, the stream holds the new ids back until the next token completes it.
    - Some tokenizers decode a token differently at the start of a text than after
      another token (SentencePiece's "▁the" is "the" alone and " the" after a word,
      as in Hugging Face's Metaspace and WordPiece decoders): decoding the new ids
      after their context gives the text they have inside the whole.

    The window is a few tokens long, so each push costs the same however long the
    text grows.
    """

    CONTEXT_TOKENS = 4  # prompt ids kept as the first piece's context
    MAX_PENDING = 8  # a UTF-8 character has at most 4 bytes; past this, emit what there is

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids: list[int] = [int(i) for i in list(context)[-self.CONTEXT_TOKENS:]]
        self.emitted = len(self.ids)  # ids[:emitted] are the context; the rest are pending

    @property
    def pending(self) -> list[int]:
        return self.ids[self.emitted:]

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True) if self.pending else ""

    def _emit(self, final: bool) -> str:
        decode = self.tokenizer.decode
        text = decode(self.ids)
        if not final and text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return ""
        before = decode(self.ids[:self.emitted]) if self.emitted else ""
        # A tokenizer whose text is not additive here (bytes that were emitted broken and
        # now join the new ones) gets the new ids decoded on their own.
        piece = text[len(before):] if text.startswith(before) else decode(self.pending)
        self.ids = self.pending  # what was new is the next piece's context
        self.emitted = len(self.ids)
        return piece
