"""The tokenizer protocol, its serialised form, and incremental decoding (no torch)."""
from __future__ import annotations

import json
from typing import Protocol, Sequence, runtime_checkable

from gen.core.errors import GenError


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
    from gen.core.plugins import get_registry

    if isinstance(document, str):
        try:
            document = json.loads(document)
        except json.JSONDecodeError as error:
            raise GenError(f"the stored tokenizer is not valid JSON ({error})") from None
    if not isinstance(document, dict) or "name" not in document or "state" not in document:
        raise GenError('the stored tokenizer must be {"name": ..., "state": ...}')
    cls = get_registry().get("tokenizer", document["name"])
    return cls.from_dict(document["state"])


class TextStream:
    """Turns token ids, pushed one at a time, into pieces of text as they become whole.

    Byte-level tokens can split a character: while the pending ids decode to text
    ending in a replacement character, the stream holds them back until the next
    token completes it. Decoding only the pending ids keeps each push O(1).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        self.pending.append(int(token_id))
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 8:  # a UTF-8 character has at most 4 bytes
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending)
        self.pending = []
        return text
