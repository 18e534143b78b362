"""The generation loop shared by the torch generator (`gen sample`) and the
onnxruntime generator (`gen run`). It is numpy code and never imports torch.

A *backend* runs the model: given input ids, an attention mask covering past and
current positions, and the past (the KV cache, or None), its `step` returns the
logits of the last position and the new past. Because the loop, the context policy and the
samplers are shared, the same model, sampler and seed give the same text on both.

What happens to one row (its window past `block_size`, the history samplers see, the
draw, the text with stop strings, the limit) is `RowPolicy`, which gen serve's scheduler
uses too: rows of a batch slide when each would alone (the batch is prefilled again, the
other rows with their whole window), so a prompt's text in a batch equals its text alone,
and equals its text from the server for the same seed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from gen.core.constraints import CompiledConstraint
from gen.core.errors import GenError
from gen.core.sampling import Sampler, SamplingContext, largest, log_softmax
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


class RowHistory:
    """One row's prompt ids and generated ids, grown in place: its row of
    `SamplingContext.tokens`. Appending writes one id; samplers get a read-only view,
    so nothing is copied or rebuilt per step."""

    def __init__(self, prompt_ids: Sequence[int]):
        self.prompt_length = len(prompt_ids)
        self.length = self.prompt_length
        self._ids = np.zeros(2 * self.prompt_length + 16, dtype=np.int64)
        self._ids[:self.length] = prompt_ids
        self._read_only = self._view()

    def _view(self) -> np.ndarray:
        read_only = self._ids.view()
        read_only.flags.writeable = False
        return read_only

    def append(self, token: int) -> None:
        if self.length == len(self._ids):  # full: double the capacity
            self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
            self._read_only = self._view()
        self._ids[self.length] = token
        self.length += 1

    @property
    def tokens(self) -> np.ndarray:
        return self._read_only[:self.length]


class RowPolicy:
    """How one row (one prompt, sample or request choice) is generated: the policy written
    once for the batch generator (generate_ids, generate_text) and for gen serve's scheduler
    (gen.runtime.scheduler), so that their texts agree by construction.

    It holds the row's window (what the model conditions on), its history (what samplers
    that want `context` see), the sampler chain and random stream it draws with (the batch
    generator's rows share one of each and draw together; the scheduler's rows each have
    their own stream), its text with the stop strings, its limit and its count, and its
    constraint's state when it has one (gen.core.constraints: masked before the chain, and
    the rule that ends a constrained row). Whoever runs the model drives it:

        prefill `window` (a new row, or one that slid), or decode `window[-1]`;
        ids = row.draw(logits), or draw_rows(rows, ...) for rows that draw together;
        piece, reason = row.accept(token)   # reason: "stop", "length", or None
        if row.slide_due: row.slide(), then prefill `window` again.

    The context policy: a prompt longer than `block_size` keeps its last `block_size`
    tokens. With a KV cache, a row whose cache cannot take its new token keeps the last
    `block_size // 2` tokens and is prefilled again (positions restart at 0). Without one,
    every step feeds the window, its last `block_size` tokens.
    """

    def __init__(self, prompt_ids: Sequence[int], block_size: int, uses_cache: bool, max_tokens: int,
                 chain: Sampler, rng, tokenizer: Tokenizer | None = None, stop: Sequence[str] = (),
                 keep_text: bool = True, constraint: CompiledConstraint | None = None):
        if len(prompt_ids) == 0:
            raise GenError("every prompt needs at least one token; give a non-empty --prompt")
        self.block_size = block_size
        self.uses_cache = uses_cache
        self.window = list(prompt_ids)[-block_size:]
        self.chain = chain
        self.rng = rng
        self.tokenizer = tokenizer
        self.history = RowHistory(prompt_ids) if getattr(chain, "wants_context", False) else None
        self.text = RowText.start(tokenizer, prompt_ids, stop) if keep_text else None
        self.max_tokens = max_tokens
        self.constraint = constraint.start() if constraint is not None else None
        self.ending = False  # its constraint ends it before this step's token (gen.core.constraints)
        self.took_token = False  # whether the last accepted token joined its text (per-token reports)
        self.count = 0  # tokens generated
        self.finish_reason: str | None = None  # "stop" or "length" once the row has ended

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.count >= self.max_tokens

    @property
    def slide_due(self) -> bool:
        """Whether the KV cache cannot take the window's last token: slide, then prefill again."""
        return self.uses_cache and len(self.window) > self.block_size

    def slide(self) -> None:
        self.window = self.window[-max(1, self.block_size // 2):]

    def draw(self, logits: np.ndarray) -> np.ndarray:
        """The next token of this row alone from its (1, vocab) logits, as a (1,) array."""
        return draw_rows([self], logits, self.chain, self.rng)

    def constrain(self, logits: np.ndarray) -> np.ndarray:
        """This row's (vocab,) logits with its constraint applied: masked to the tokens its language
        allows, or as they are when the row ends here instead (`ending`; its draw is discarded)."""
        if self.constraint is None or self.finish_reason is not None:
            return logits
        self.ending = self.constraint.ends_before(logits)
        return logits if self.ending else self.constraint.mask(logits)

    def accept(self, token: int) -> tuple[str, str | None]:
        """Take the drawn token; return the text it made safe to show, and why the row ended
        with it ("stop": a stop string or its constraint; "length": max_tokens) or None."""
        self.took_token = False
        if self.ending and self.finish_reason is None:  # its constraint ended it: the token is not taken
            self.finish_reason = "stop"
            return self._end_text(), self.finish_reason
        if self.constraint is not None and self.finish_reason is None:
            self.constraint.advance(token)
        self.count += 1
        self.window.append(token)
        if not self.uses_cache:
            del self.window[:-self.block_size]  # only the last block_size tokens are ever read
        if self.history is not None:
            self.history.append(token)
        piece = self.text.push(token) if self.text is not None else ""
        if self.finish_reason is not None:  # ended before: a batch draws on for its other rows
            return piece, None
        self.took_token = self.text is None or not self.text.finished  # not the end of a stop string
        if self.text is not None and self.text.finished:
            self.finish_reason = "stop"
        elif self.constraint is not None and self.constraint.complete and not self.constraint.can_continue():
            self.finish_reason = "stop"  # a whole sentence of its language, which nothing may follow
            piece += self._end_text()
        elif self.count >= self.max_tokens:
            complete = self.constraint is not None and self.constraint.complete
            self.finish_reason = "stop" if complete else "length"
        return piece, self.finish_reason

    def _end_text(self) -> str:
        """What its text held back (for a stop string that did not come), handed out now that the
        constraint ends the row; later tokens of its batch add nothing."""
        if self.text is None:
            return ""
        out = self.text.close()
        self.text.finished = True
        return out

    def close(self) -> str:
        """The text held back until the end."""
        return self.text.close()


def draw_rows(rows: Sequence[RowPolicy], logits: np.ndarray, chain: Sampler, rng) -> np.ndarray:
    """The next token of every row, (rows,) int64, from their stacked (rows, vocab) logits in
    one call of `chain` with `rng` (a Generator, or a gen.core.sampling.RowStreams). A chain
    that wants the text so far gets the rows' histories as its SamplingContext. A row with a
    constraint has its own row of the logits masked first (RowPolicy.constrain)."""
    if any(row.constraint is not None for row in rows):
        logits = np.stack([row.constrain(row_logits) for row, row_logits in zip(rows, logits)])
    if not getattr(chain, "wants_context", False):
        return chain(logits, rng)
    context = SamplingContext([row.history.tokens for row in rows], [row.history.prompt_length for row in rows],
                              rows[0].count, rows[0].tokenizer)
    return chain(logits, rng, context)


def _batch_rows(backend: Backend, prompts: Sequence[Sequence[int]], sampler: Sampler, rng, max_new_tokens: int,
                tokenizer, stop: Sequence[str] = (), keep_text: bool = True,
                constraint: CompiledConstraint | None = None) -> list[RowPolicy]:
    if not prompts:
        raise GenError("every prompt needs at least one token; give a non-empty --prompt")
    return [RowPolicy(ids, backend.block_size, backend.uses_cache, max_new_tokens, sampler, rng, tokenizer, stop,
                      keep_text, constraint) for ids in prompts]


def _run_batch(backend: Backend, rows: list[RowPolicy]) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Generate `rows`, which share one chain and one random stream, as one left-padded batch:
    yield every step's ids (B,), the logits they were drawn from (B, V), and each row's piece
    of text. Rows slide when each would alone (the batch is prefilled again, the other rows
    with their whole window), so a prompt's text in a batch equals its text alone."""
    chain, rng = rows[0].chain, rows[0].rng
    past = mask = input_ids = None
    generating = sum(not row.done for row in rows)
    while generating:
        if past is None:
            input_ids, mask = left_pad([row.window for row in rows])
        logits, past = backend.step(input_ids, mask, past)
        next_ids = draw_rows(rows, logits, chain, rng)
        pieces = []
        for row, token in zip(rows, next_ids.tolist()):
            piece, reason = row.accept(token)
            pieces.append(piece)
            generating -= reason is not None
        yield next_ids, logits, pieces
        if not backend.uses_cache:
            past = None
            continue
        sliding = [row for row in rows if row.slide_due]  # a shorter, left-padded row does not, as alone
        if sliding:
            for row in sliding:
                row.slide()
            past = None
        else:
            input_ids = next_ids.reshape(-1, 1)
            mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)


def generate_ids(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    sampler: Sampler,
    rng: np.random.Generator,
    max_new_tokens: int,
    tokenizer=None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield, `max_new_tokens` times, the next token id of every row, (B,) int64, and the
    logits it was drawn from, (B, V) float32. The rows draw together: one call of `sampler`
    with `rng` per step.

    A sampler (chain) whose `wants_context` is true gets the SamplingContext, built
    from the history only then; `tokenizer` goes into that context.
    """
    rows = _batch_rows(backend, prompts, sampler, rng, max_new_tokens, tokenizer, keep_text=False)
    for next_ids, logits, _ in _run_batch(backend, rows):
        yield next_ids, logits


class StopMatcher:
    """Finds one stop string in text fed a character at a time, in time linear in the
    text however long the stop string (Knuth-Morris-Pratt).

    `matched` is how many characters of the stop string the text now ends with: text
    that may still turn into the stop string, and so must be held back.
    """

    def __init__(self, stop: str):
        self.stop = stop
        self.fallback = _fallback_table(stop)
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


@functools.lru_cache(maxsize=256)
def _fallback_table(stop: str) -> tuple[int, ...]:
    """fallback[i]: the longest proper prefix of stop[:i + 1] that is also its suffix. Built once
    per stop string (a request's n rows, and the requests that repeat it, share the table)."""
    fallback = [0] * len(stop)
    length = 0
    for i in range(1, len(stop)):
        while length and stop[i] != stop[length]:
            length = fallback[length - 1]
        if stop[i] == stop[length]:
            length += 1
        fallback[i] = length
    return tuple(fallback)


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
    top = largest(model, top_n)  # best first, ties to the lower id; a partition, not a sort of the vocabulary
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
    finish_reasons: list[str | None]  # why each row ended ("stop" or "length"), None while it runs
    counts: list[int]  # the tokens each row has drawn so far


def generate_text(
    backend: Backend,
    tokenizer: Tokenizer,
    prompts: Sequence[str | Sequence[int]],
    sampler: Sampler,
    rng: np.random.Generator,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    logprobs: int | None = None,
    constraint: CompiledConstraint | None = None,
) -> Iterator[TextStep]:
    """Stream text: yield, per step, the new piece of text of every row.

    Each prompt is text, or its token ids when the caller has encoded it already. A row
    ends at the first stop string (which is not included); the loop ends when every row
    has ended or `max_new_tokens` tokens were drawn; a last step without tokens flushes
    what was held back. The rows draw together: one call of `sampler` with `rng` per step.
    With `logprobs` (a number of alternatives, 0 for none) each step also reports every
    row's TokenChoice, read off the sampler chain (gen.core.sampling.SamplerChain).
    With `constraint` (compiled for `tokenizer`) each row keeps to its language, with its own
    state (gen.core.constraints), and ends by its rule.
    """
    prompt_ids = [encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else prompt for prompt in prompts]
    rows = _batch_rows(backend, prompt_ids, sampler, rng, max_new_tokens, tokenizer, stop, constraint=constraint)
    for next_ids, logits, pieces in _run_batch(backend, rows):
        tokens = None
        if logprobs is not None:
            tokens = token_choices(logits, sampler.drawn_from, next_ids, logprobs, tokenizer)
            tokens = [token if row.took_token else None for row, token in zip(rows, tokens)]
        yield TextStep(pieces, tokens, [row.finish_reason for row in rows], [row.count for row in rows])
    yield TextStep([row.close() for row in rows], None, [row.finish_reason for row in rows],
                   [row.count for row in rows])


DEFAULT_MAX_NEW_TOKENS = 500


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate text, as gen.runtime.OnnxModel's text methods take it.

    `sampler` is a spec ("top_k:k=40"), a list of specs (a chain), a SamplerRecipe, a
    Sampling, a sampler object (used as it is, state and all) or None (multinomial);
    every generation gets fresh sampler objects from specs and recipes. `logit_bias` maps
    token ids to a bias added to their logits (-inf forbids a token). `rng` (which
    overrides `seed`) lets several calls share one random stream, as `gen run
    --num-samples` does. `stop` is a string or a list of them. `constraint` keeps the text
    inside a language: a gen.core.constraints.Constraint, e.g. Constraint("regex", "[0-9]+").
    """

    sampler: object = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None
    stop: str | Sequence[str] = ()
    rng: np.random.Generator | None = None
    logit_bias: Mapping[int, float] | None = None
    constraint: object = None
