"""The generation loop shared by the torch generator (`gen sample`) and the
onnxruntime generator (`gen run`). It is numpy code and never imports torch.

A *backend* runs the model: given input ids, an attention mask covering past and
current positions, and the past (the KV cache, or None), its `step` returns the
logits of the last position and the new past. Because the loop, the context policy and the
samplers are shared, the same model, sampler and seed give the same text on both.

Context policy (generation past `block_size`): prompts longer than `block_size`
keep their last `block_size` tokens. With a KV cache, when a row's cache is full the
loop keeps the last `block_size // 2` tokens of that row and prefills them again
(positions restart at 0), then goes on reusing the cache. Rows of a batch slide
when each would alone (the batch is prefilled again, the other rows with their
whole context), so a prompt's text in a batch equals its text alone. Without a
cache, every step feeds the last `block_size` tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np

from gen.core.errors import GenError
from gen.core.sampling import Sampler, Sampling, SamplingContext, log_softmax
from gen.core.tokenizer import TextStream, Tokenizer


class Backend(Protocol):
    """A model that the generation loop and the scorer can run: a torch checkpoint
    (gen.core.training.torch_backend) or an ONNX export (gen.runtime.onnx_model)."""

    block_size: int  # the longest context the model reads
    vocab_size: int
    uses_cache: bool  # whether step() returns a past worth feeding back

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        """(B, T) int64 ids, (B, P+T) int64 mask, past or None -> ((B, T, V) float32 logits, past)."""

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        """Like forward, with only the last position's logits: ((B, V) float32, past)."""

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids, T <= block_size -> (B, T, V) float32 logits, every position attended."""

    def empty_past(self, batch_size: int):
        """The zero-length past of a prefill."""


class BackendBase:
    """`step` and `logits` for a backend that implements `forward` and `empty_past`."""

    block_size: int

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        logits, past = self.forward(input_ids, attention_mask, past)
        return logits[:, -1, :], past

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise GenError(f"logits need a (batch, length) array of token ids, got shape {input_ids.shape}")
        if input_ids.shape[1] > self.block_size:
            raise GenError(f"cannot score {input_ids.shape[1]} tokens at once; block_size is {self.block_size}")
        logits, _ = self.forward(input_ids, np.ones_like(input_ids), None)
        return logits


def left_pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths as (B, T) ids and mask, padded on the left with 0s."""
    width = max(len(row) for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask


class History:
    """Every row's prompt ids and generated ids, grown in place: what samplers see as
    `SamplingContext.tokens`. Appending a step writes one id per row; the rows handed
    to samplers are read-only views, so nothing is copied or rebuilt per step."""

    def __init__(self, prompts: Sequence[Sequence[int]]):
        self.prompt_lengths = [len(row) for row in prompts]
        self.lengths = np.array(self.prompt_lengths, dtype=np.int64)
        self.ids = np.zeros((len(prompts), 2 * max(self.prompt_lengths) + 16), dtype=np.int64)
        for i, row in enumerate(prompts):
            self.ids[i, :len(row)] = row

    def append(self, next_ids: np.ndarray) -> None:
        if self.lengths.max() == self.ids.shape[1]:  # full: double the capacity
            self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)], axis=1)
        self.ids[np.arange(len(self.lengths)), self.lengths] = next_ids
        self.lengths += 1

    def context(self, step: int, tokenizer) -> SamplingContext:
        read_only = self.ids.view()
        read_only.flags.writeable = False
        rows = [read_only[i, :length] for i, length in enumerate(self.lengths.tolist())]
        return SamplingContext(rows, list(self.prompt_lengths), step, tokenizer)


def prompt_window(prompt_ids: Sequence[int], block_size: int) -> list[int]:
    """The context a prompt conditions on: its last `block_size` tokens."""
    return list(prompt_ids)[-block_size:]


def slid_window(row: list[int], block_size: int) -> list[int]:
    """What a row whose KV cache is full keeps, to be prefilled again: its last `block_size // 2` tokens."""
    return row[-max(1, block_size // 2):]


def generate_ids(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    sampler: Sampler,
    rng: np.random.Generator,
    max_new_tokens: int,
    tokenizer=None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield, `max_new_tokens` times, the next token id of every row, (B,) int64, and the
    logits it was drawn from, (B, V) float32.

    A sampler (chain) whose `wants_context` is true gets the SamplingContext, built
    from the history only then; `tokenizer` goes into that context.
    """
    if not prompts or any(len(row) == 0 for row in prompts):
        raise GenError("every prompt needs at least one token; give a non-empty --prompt")
    block_size = backend.block_size
    rows = [prompt_window(row, block_size) for row in prompts]  # the context each row conditions on
    history = History(prompts) if getattr(sampler, "wants_context", False) else None
    past = None
    mask = None
    for step in range(max_new_tokens):
        if past is None:
            window = rows if backend.uses_cache else [row[-block_size:] for row in rows]
            input_ids, mask = left_pad(window)
        logits, past = backend.step(input_ids, mask, past)
        if history is None:
            next_ids = sampler(logits, rng)
        else:
            next_ids = sampler(logits, rng, history.context(step, tokenizer))
            history.append(next_ids)
        yield next_ids, logits
        for row, token in zip(rows, next_ids.tolist()):
            row.append(token)
        if not backend.uses_cache:
            past = None
            continue
        # A row whose cache cannot take its new token slides its window; a shorter,
        # left-padded row does not, exactly as it would not if it ran alone.
        full = [len(row) > block_size for row in rows]
        if any(full):
            rows = [slid_window(row, block_size) if row_is_full else row for row, row_is_full in zip(rows, full)]
            past = None
        else:
            input_ids = next_ids.reshape(-1, 1)
            mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)


class StopMatcher:
    """Finds one stop string in text fed a character at a time, in time linear in the
    text however long the stop string (Knuth-Morris-Pratt).

    `matched` is how many characters of the stop string the text now ends with: text
    that may still turn into the stop string, and so must be held back.
    """

    def __init__(self, stop: str):
        self.stop = stop
        # fallback[i]: the longest proper prefix of stop[:i + 1] that is also its suffix.
        self.fallback = [0] * len(stop)
        length = 0
        for i in range(1, len(stop)):
            while length and stop[i] != stop[length]:
                length = self.fallback[length - 1]
            if stop[i] == stop[length]:
                length += 1
            self.fallback[i] = length
        self.matched = 0

    def feed(self, character: str) -> bool:
        """Take one more character; True when the text now ends with the whole stop string."""
        matched = self.matched
        while matched and character != self.stop[matched]:
            matched = self.fallback[matched - 1]
        if character == self.stop[matched]:
            matched += 1
        self.matched = matched
        return matched == len(self.stop)


@dataclass
class RowText:
    """The text of one row, held back while it could still turn into a stop string."""

    stream: TextStream
    matchers: list[StopMatcher]
    pending: str = ""  # text not handed out yet: it may be the start of a stop string
    finished: bool = False

    @classmethod
    def start(cls, tokenizer: Tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()) -> "RowText":
        """The text of a row that continues `prompt_ids`: the prompt's last ids are the stream's
        context, so a tokenizer that decodes a token differently after others (SentencePiece's
        leading space) gives the text the whole would have."""
        return cls(TextStream(tokenizer, context=prompt_ids), [StopMatcher(s) for s in stop if s])

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that is now safe to show."""
        return self.add(self.stream.push(token_id))

    def add(self, piece: str) -> str:
        if self.finished:
            return ""
        if not self.matchers:
            return piece
        for position, character in enumerate(piece):
            for matcher in self.matchers:
                if matcher.feed(character):  # the stop string ends here: hand out what came before it
                    self.finished = True
                    text = self.pending + piece[:position + 1]
                    self.pending = ""
                    return text[:len(text) - len(matcher.stop)]
        text = self.pending + piece
        held = max(matcher.matched for matcher in self.matchers)
        self.pending = text[len(text) - held:] if held else ""
        return text[:len(text) - held]

    def close(self) -> str:
        if self.finished:
            return ""
        out = self.add(self.stream.flush())
        out, self.pending = out + self.pending, ""
        return out


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    if prompt == "":
        raise GenError("the prompt is empty; give at least one character with --prompt")
    try:
        return tokenizer.encode(prompt)
    except GenError as error:
        raise GenError(f"cannot encode the prompt: {error}") from None


@dataclass
class Alternative:
    """A token the model could have drawn, with its log-probabilities."""

    id: int
    text: str
    logprob: float  # under the model's own distribution
    sampled_logprob: float  # under the distribution the sampler drew from (-inf if removed)


@dataclass
class TokenChoice:
    """One generated token and what the model and the sampler thought of it."""

    id: int
    text: str  # the token decoded on its own
    logprob: float  # under the model's own distribution
    sampled_logprob: float  # under the distribution it was drawn from, after the filters
    top: list[Alternative]  # the most likely tokens under the model, best first

    def to_json(self) -> dict:
        return {
            "token": self.id, "text": self.text, "logprob": self.logprob,
            "sampled_logprob": self.sampled_logprob,
            "top": [{"token": alternative.id, "text": alternative.text, "logprob": alternative.logprob,
                     "sampled_logprob": alternative.sampled_logprob} for alternative in self.top],
        }


def token_choices(logits, drawn_from, ids, top_n: int, tokenizer) -> list[TokenChoice]:
    """The TokenChoice of every row of one step: `logits` (B, V) from the model,
    `drawn_from` (B, V) what the sampler drew `ids` (B,) from."""
    model = log_softmax(logits)
    sampled = model if drawn_from is logits else log_softmax(drawn_from)  # a chain without filters
    # Sorting the whole vocabulary every token only pays when alternatives are asked for.
    top = np.argsort(-model, axis=-1, kind="stable")[:, :top_n] if top_n else np.empty((len(ids), 0), np.int64)
    choices = []
    for row, token in enumerate(ids.tolist()):
        alternatives = [
            Alternative(int(i), tokenizer.decode([int(i)]), float(model[row, i]), float(sampled[row, i]))
            for i in top[row].tolist()
        ]
        choices.append(TokenChoice(token, tokenizer.decode([token]), float(model[row, token]),
                                   float(sampled[row, token]), alternatives))
    return choices


@dataclass
class TextStep:
    """What one step of generate_text produced for every row."""

    pieces: list[str]  # the new text of each row ("" if none, or held back)
    tokens: list[TokenChoice | None] | None  # each row's token (None once a row ended); None unless asked


def generate_text(
    backend: Backend,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    sampler: Sampler,
    rng: np.random.Generator,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    logprobs: int | None = None,
) -> Iterator[TextStep]:
    """Stream text: yield, per step, the new piece of text of every row.

    A row ends at the first stop string (which is not included); the loop ends
    when every row has ended or `max_new_tokens` tokens were drawn; a last step
    without tokens flushes what was held back. With `logprobs` (a number of
    alternatives, 0 for none) each step also reports every row's TokenChoice,
    read off the sampler chain (gen.core.sampling.SamplerChain).
    """
    prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    texts = [RowText.start(tokenizer, ids, stop) for ids in prompt_ids]
    for next_ids, logits in generate_ids(backend, prompt_ids, sampler, rng, max_new_tokens, tokenizer):
        tokens = None
        if logprobs is not None:
            tokens = token_choices(logits, sampler.drawn_from, next_ids, logprobs, tokenizer)
        pieces = [row.push(token) for row, token in zip(texts, next_ids.tolist())]
        if tokens is not None:
            tokens = [None if row.finished else token for row, token in zip(texts, tokens)]
        yield TextStep(pieces, tokens)
        if all(row.finished for row in texts):
            break
    yield TextStep([row.close() for row in texts], None)
