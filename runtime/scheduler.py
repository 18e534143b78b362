"""Continuous batching for `gen serve`: many generations share one decode step (numpy, no torch).

    scheduler = Scheduler(OnnxModel("model.onnx"), max_batch=32)
    scheduler.start()
    request = scheduler.submit([Choice(prompt_ids, Sampling(["top_p:p=0.9"]), seed=1, max_tokens=100)],
                               deliver=print)       # Piece, Finished or Failed events, in order
    ...
    scheduler.stop()                                # finish what is running, then end the thread

`submit` makes a request's rows on the caller's thread, outside the scheduler's lock (their
stop tables, sampler chains, histories: work in proportion to the request), so that no
request's preparation holds up the rows already running. One thread owns the model. Each step it
1. admits waiting rows while there is room (`max_batch` rows; each choice of a request is a row),
2. runs one decode step for all the running rows at once,
3. prefills the rows that are new, or whose context window slid, alone (batch 1, as `gen run` does),
4. samples every row with its own sampler chain and its own random stream, and hands each
   request its new text,
5. lets finished and cancelled rows leave, and the prefilled rows join the running batch.

A row's text does not depend on the rows beside it. Each row is a gen.core.generation.RowPolicy,
the very policy `gen run` follows for a prompt (its window and slides, history, draw, stop strings
and limit), with its own sampler chain (fresh from its recipes) and its own random stream,
`np.random.default_rng(seed)`; it is sampled alone on its own (1, vocab) logits.
The rows share only the model's forward pass: their KV caches lie side
by side, left-padded to one length. The graph derives positions from the attention mask, so
padding moves no position, but onnxruntime's CPU kernels sum over the cache in a few
interleaved partial sums: padding by an amount that is not a multiple of their count rounds
the logits differently (by about 1e-7), which could, rarely, flip a sampled token. So the
scheduler measures at start the padding step that keeps a row's logits bitwise equal to its
logits alone (`exact_padding_quantum`; 4 on the machine this was written on) and only pads by
multiples of it. A new or slid row waits up to quantum - 1 steps to line up with the largest
batch, which grows a token a step; rows whose lengths still differ by other amounts decode in
a batch of their own. Then every text equals `gen run`'s for its seed.

What costs per step is kept per step, not per row: a row that leaves frees its slot instead
of being cut out of the arrays (which would copy every cache), rows of one length prefill
together, and rows whose samplers all declare `row_wise = True` (gen.core.sampling), with the
same recipes, share one chain and draw in one call on their stacked logits, each from its own
random stream (gen.core.sampling.RowStreams): numpy reduces each row of a (rows, vocab) array
as it reduces that row alone, so each row draws the token it would draw alone, at a fraction
of the cost of one chain call per row. A constrained row (gen.core.constraints) may share such a
chain: its constraint state is its RowPolicy's own, and masks its own row of the logits first.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from gen.core.constraints import CompiledConstraint
from gen.core.errors import GenError, first_line
from gen.core.generation import RowPolicy, TokenChoice, draw_rows, left_pad, token_choices
from gen.core.sampling import RowStreams, SamplerOptionsError, Sampling

# Prefills (new rows, slid windows) run until this much time has passed in a step, so that
# a crowd arriving at once delays the running rows' next token by a bounded amount.
PREFILL_BUDGET_S = 0.02
# Leading cache columns that are padding in every row of a batch are cut off once there are
# this many: cutting copies the whole cache, padding only costs a little attention.
TRIM_COLUMNS = 16
QUANTUM_CANDIDATES = (1, 2, 4, 8, 16, 32)


# --- what goes in and what comes out -----------------------------------------------


@dataclass
class Choice:
    """One text to generate: the prompt's ids, the sampler recipe, the seed and the limits."""

    prompt_ids: Sequence[int]
    sampling: Sampling
    seed: int
    max_tokens: int
    stop: Sequence[str] = ()
    logprobs: int | None = None  # alternatives to report with each token; None: no TokenChoice
    constraint: CompiledConstraint | None = None  # each row keeps its own state of it (gen.core.constraints)


@dataclass
class Piece:
    """One generated token of a choice and the text it made safe to show ("" while held back)."""

    choice: int
    text: str
    token: TokenChoice | None  # with `logprobs`; None after a stop string
    time: float  # time.perf_counter() when it was sampled


@dataclass
class Finished:
    """A choice ended: the text held back until now, why, and how many tokens it generated."""

    choice: int
    text: str
    reason: str  # "stop" (a stop string, or a constrained text complete) or "length" (max_tokens)
    tokens: int
    time: float


@dataclass
class Failed:
    """The request ended with an error (a sampler plugin or the model failed); one line."""

    message: str
    bad_request: bool = False  # the request's own sampler options made the logits unusable, not the model


class Busy(Exception):
    """The scheduler takes no more requests: its queue is full, or it is stopping."""


class Request:
    """A submitted request: its choices, their rows (made by `submit`, ready to run), where its
    events go, and whether it was cancelled."""

    def __init__(self, choices: Sequence[Choice], deliver: Callable[[object], None]):
        self.choices = list(choices)
        self.deliver = deliver
        self.cancelled = False
        self.failed = False
        self.rows: list[_Row] = []  # one per choice, in order
        self.admitted = 0  # how many of its rows the scheduler has taken

    def cancel(self) -> None:
        """Stop generating (the client left); its rows leave the batch at the next step."""
        self.cancelled = True

    @property
    def over(self) -> bool:
        return self.cancelled or self.failed


# --- one row: one choice being generated --------------------------------------------


class _Row:
    """One choice being generated: its RowPolicy (gen.core.generation, the very policy of
    `gen run`) and the request it belongs to."""

    def __init__(self, request: Request, index: int, policy: RowPolicy, shared: bool):
        self.request = request
        self.index = index
        self.policy = policy
        self.shared = shared  # its chain is row-wise and shared: it draws with the rows of that chain
        self.logprobs = request.choices[index].logprobs
        self.waited = 0  # steps it waited to be prefilled in line with the batch

    @property
    def window(self) -> list[int]:
        return self.policy.window

    def accept(self, token: int, logits: np.ndarray, drawn_from: np.ndarray, tokenizer, now: float) -> list:
        """Take the drawn token (from (1, vocab) logits and drawn_from) sampled at time `now`;
        return its events."""
        choice = None
        if self.logprobs is not None:
            choice = token_choices(logits, drawn_from, np.array([token]), self.logprobs, tokenizer)[0]
        piece, reason = self.policy.accept(token)
        if reason is None:
            return [Piece(self.index, piece, choice, now)]
        return [Piece(self.index, piece, choice if self.policy.took_token else None, now),
                Finished(self.index, self.policy.close(), reason, self.policy.count, now)]


# --- rows decoded together ------------------------------------------------------------


def _pad_past(past: list[np.ndarray], columns: int) -> list[np.ndarray]:
    """KV cache arrays (B, heads, P, head_size) with `columns` zero columns in front of P."""
    if columns == 0:
        return past
    return [np.pad(array, ((0, 0), (0, 0), (columns, 0), (0, 0))) for array in past]


def _pad_mask(mask: np.ndarray, columns: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (columns, 0))) if columns else mask


class _Batch:
    """Rows that decode in one model call: their KV caches side by side, left-padded to one length.

    A row that leaves frees its slot rather than being cut out, which would copy every row's
    cache: the slot's mask is zeroed, so it decodes nothing that matters (and no position grows),
    and the next row to join that fits the batch's length takes it over. When most slots are
    free the batch is compacted.

    For a model whose cache is a fixed-size state (`state`), the past is one (B, ...) array per
    state tensor, which has no sequence axis to pad: only the mask is padded (the model reads a
    step's own mask columns), a row that joins puts its state in its slot, and a free slot's
    mask column 0 leaves its state as it is.
    """

    def __init__(self, state: bool = False):
        self.state = state
        self.rows: list[_Row | None] = []  # one per slot of the arrays; None: free
        self.past: list[np.ndarray] = []  # per past input of the graph: (B, heads, P, head_size), or (B, ...) state
        self.mask = np.zeros((0, 0), dtype=np.int64)  # (B, P): 1 for a cached token, 0 for padding
        self.changed = False  # rows joined or left since the last trim

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def live(self) -> list[_Row]:
        return [row for row in self.rows if row is not None]

    def decode(self, backend) -> list[tuple[_Row, np.ndarray]]:
        """Feed every row its last sampled token: each live row with the (1, vocab) logits of its next one."""
        ids = np.array([[row.window[-1] if row is not None else 0] for row in self.rows], dtype=np.int64)
        used = np.array([[row is not None] for row in self.rows], dtype=np.int64)
        mask = np.concatenate([self.mask, used], axis=1)
        logits, self.past = backend.step(ids, mask, self.past)
        self.mask = mask
        return [(row, logits[slot:slot + 1]) for slot, row in enumerate(self.rows) if row is not None]

    def join(self, entries: list[tuple[_Row, list[np.ndarray], np.ndarray]]) -> None:
        """Add prefilled rows, each with its (1, heads, L, head_size) cache (or (1, ...) state) and
        (1, L) mask: into a free slot when L fits the batch's length, else appended (padding the
        shorter side)."""
        self.changed = True
        free = [slot for slot, row in enumerate(self.rows) if row is None]
        appended = []
        for row, past, mask in entries:
            pad = self.width - mask.shape[1]
            if not free or pad < 0:
                appended.append((row, past, mask))
                continue
            slot = free.pop(0)
            for array, own in zip(self.past, past):
                if self.state:
                    array[slot] = own[0]
                else:
                    array[slot, :, :pad] = 0
                    array[slot, :, pad:] = own[0]
            self.mask[slot] = 0
            self.mask[slot, pad:] = mask[0]
            self.rows[slot] = row
        if not appended:
            return
        width = max([self.width] + [mask.shape[1] for _, _, mask in appended])
        parts = [(self.past, self.mask)] if self.rows else []
        parts += [(past, mask) for _, past, mask in appended]
        padded = [(past if self.state else _pad_past(past, width - mask.shape[1]),
                   _pad_mask(mask, width - mask.shape[1])) for past, mask in parts]
        self.past = [np.concatenate(arrays, axis=0) for arrays in zip(*(past for past, _ in padded))]
        self.mask = np.concatenate([mask for _, mask in padded], axis=0)
        self.rows += [row for row, _, _ in appended]

    def leave(self, leaving: Callable[[_Row], bool]) -> list[_Row]:
        """Free the slots of the rows for which `leaving(row)` holds; return those rows."""
        gone = []
        for slot, row in enumerate(self.rows):
            if row is not None and leaving(row):
                gone.append(row)
                self.rows[slot] = None
                self.mask[slot] = 0
                self.changed = True
        if gone and 2 * len(self.live) <= len(self.rows):  # half free: decode only the live rows
            keep = [slot for slot, row in enumerate(self.rows) if row is not None]
            self.rows = [self.rows[slot] for slot in keep]
            self.past = [array[keep] for array in self.past]
            self.mask = self.mask[keep]
        return gone

    def trim(self, quantum: int) -> None:
        """Cut leading columns that are padding in every row, a multiple of `quantum` at a time
        (only rows that joined or left make such columns)."""
        if not self.changed:
            return
        self.changed = False
        used = self.mask.any(axis=0)
        padding = int(used.argmax()) if used.any() else self.width
        padding -= padding % quantum
        if padding >= TRIM_COLUMNS:
            if not self.state:
                self.past = [np.ascontiguousarray(array[:, :, padding:]) for array in self.past]
            self.mask = self.mask[:, padding:]


# --- the scheduler ----------------------------------------------------------------------


class Scheduler:
    """Runs every request's generation in one continuously batched loop on its own thread.

    `backend` is a gen.runtime.OnnxModel (any Backend whose past is a list of
    (batch, heads, past, head_size) arrays, or of (batch, ...) state arrays). Its attribute `publish(events)` receives, once per
    step, the list of (request, event) pairs of that step; by default it calls each request's
    `deliver(event)` (a server sets its own before `start()`). `on_step(rows)`, if set, is told
    the number of rows of every step.
    """

    def __init__(self, backend, max_batch: int = 32, max_queue: int = 256):
        if max_batch < 1 or max_queue < 0:
            raise GenError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        if getattr(backend, "capacity", None):  # the rows' caches are padded and joined here, as arrays
            raise GenError(f"{getattr(backend, 'path', 'this export')} has a fixed-capacity cache "
                           f"(gen export --static-cache), which gen serve cannot batch; serve an export made "
                           f"without --static-cache")
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.block_size = backend.block_size
        self.max_batch = max_batch
        self.max_queue = max_queue
        quantum = exact_padding_quantum(backend) if backend.uses_cache else 1
        self.exact = quantum is not None
        self.quantum = quantum or 1
        self.publish: Callable[[list], None] = deliver_each
        self.on_step: Callable[[int], None] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: collections.deque[Request] = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Owned by the scheduler thread:
        self._batches: list[_Batch] = []  # rows with a KV cache, grouped by cache length modulo the quantum
        self._to_prefill: collections.deque[_Row] = collections.deque()  # new and slid rows (every row without a cache)
        self._prefilled: list[tuple[_Row, list[np.ndarray], np.ndarray]] = []  # this step's, with their caches
        self._shared_chains: dict[tuple, object] = {}  # row-wise chains by key, made by submitting threads
        self._chains_lock = threading.Lock()

    # --- the outside: submit, cancel, stop ---

    @property
    def queue_depth(self) -> int:
        """Requests waiting because the batch has no room for them."""
        with self._lock:
            return self._queued()[0]

    @property
    def active_rows(self) -> int:
        """Choices being generated: in a batch, or about to be prefilled."""
        return sum(len(batch.live) for batch in self._batches) + len(self._to_prefill) + len(self._prefilled)

    def _queued(self) -> tuple[int, int]:
        """(requests that will not fit in the batch at the next step, rows of room left after them)."""
        room, queued = self.max_batch - self.active_rows, 0
        for request in self._pending:
            room -= len(request.choices) - request.admitted
            queued += room < 0
        return queued, room

    def submit(self, choices: Sequence[Choice], deliver: Callable[[object], None]) -> Request:
        """Queue a request; raises Busy when it would wait behind `max_queue` others, or when
        stopping, and GenError when a choice cannot start (its sampler chain cannot be made).

        Every row is made here, on the caller's thread and outside the scheduler's lock: its
        stop-string tables, sampler chain, history and text stream are the request's work,
        and the scheduler thread, which steps every running row, only admits rows ready to run.
        """
        request = Request(choices, deliver)
        request.rows = [self._new_row(request, index) for index in range(len(request.choices))]
        with self._lock:
            if self._stopping:
                raise Busy("the server is shutting down")
            queued, room = self._queued()
            if room < len(request.choices) and queued >= self.max_queue:
                raise Busy(f"{queued} requests are waiting already (--max-queue {self.max_queue})")
            self._pending.append(request)
            self._wake.notify()
        return request

    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self._run, name="gen-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the ones submitted, and end the thread."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the loop ---

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._pending or self._batches or self._to_prefill or self._stopping):
                    self._wake.wait()
                if self._stopping and not (self._pending or self._batches or self._to_prefill):
                    return
            try:
                self._step()
            except Exception as error:  # a bug must not kill the server: fail what was running, go on
                traceback.print_exc(file=sys.stderr)
                self._fail_everything(f"internal error: {type(error).__name__}: {error}")

    def _step(self) -> None:
        events: list = []
        self._drop_over_rows()
        self._admit(events)
        if self.backend.uses_cache:
            sampled = self._decode_and_prefill(events)
        else:
            sampled = self._forward_windows(events)
        rows = self._sample(sampled, events)
        self._rearrange(sampled)
        if self.on_step is not None and rows:
            self.on_step(rows)
        self.publish(events)

    def _sample(self, sampled: list[tuple[_Row, np.ndarray]], events: list) -> int:
        """Draw every row's next token: rows that share a row-wise chain together (each from its
        own random stream), the others each with its own chain. Returns the number of rows sampled."""
        now = time.perf_counter()  # every token of a step is sampled at its time
        groups: dict[int, list[tuple[_Row, np.ndarray]]] = collections.defaultdict(list)
        for row, logits in sampled:
            if not row.request.over:
                groups[id(row.policy.chain) if row.shared else id(row)].append((row, logits))
        for members in groups.values():
            rows = [row.policy for row, _ in members]
            chain = rows[0].chain
            try:
                if members[0][0].shared:
                    logits = members[0][1] if len(members) == 1 else np.concatenate([part for _, part in members])
                    ids = draw_rows(rows, logits, chain, RowStreams([row.rng for row in rows]))
                    # A chain without filters drew from the logits themselves: keep that identity per row,
                    # so that token_choices need not compute the same log-probabilities twice.
                    unfiltered = chain.drawn_from is logits
                    tokens = ids.tolist()
                    parts = [logits[i:i + 1] for i in range(len(members))]
                    drawn = [(tokens[i], part, part if unfiltered else chain.drawn_from[i:i + 1])
                             for i, part in enumerate(parts)]
                else:
                    logits = members[0][1]
                    drawn = [(int(rows[0].draw(logits)[0]), logits, chain.drawn_from)]
            except GenError as error:  # a sampler plugin that misbehaves, or the model's NaNs, in one line
                for row, _ in members:
                    self._fail(row.request, str(error), events, isinstance(error, SamplerOptionsError))
                continue
            for (row, _), (token, logits, drawn_from) in zip(members, drawn):
                request = row.request
                events += [(request, event) for event in row.accept(token, logits, drawn_from, self.tokenizer, now)]
        return sum(len(members) for members in groups.values())

    def _new_row(self, request: Request, index: int) -> _Row:
        """The row of choice `index`: a fresh chain of its own, or the one chain that every row
        with the same row-wise Sampling shares (stateless, so one serves every row and step).
        Called by `submit` on the submitting threads, hence the chains' own lock."""
        choice = request.choices[index]
        key = choice.sampling.row_wise_key
        if key is None:
            chain = choice.sampling.new()
        else:
            with self._chains_lock:
                chain = self._shared_chains.get(key)
                if chain is None:
                    if len(self._shared_chains) > 1024:
                        self._shared_chains.clear()
                    chain = self._shared_chains[key] = choice.sampling.new()
        policy = RowPolicy(choice.prompt_ids, self.block_size, self.backend.uses_cache, choice.max_tokens, chain,
                           np.random.default_rng(choice.seed), self.tokenizer, choice.stop,
                           constraint=choice.constraint)
        return _Row(request, index, policy, shared=key is not None)

    def _drop_over_rows(self) -> None:
        """Rows of cancelled or failed requests leave before the step: their slots are free now."""
        with self._lock:
            if any(request.over for request in self._pending):
                self._pending = collections.deque(r for r in self._pending if not r.over)
        for batch in self._batches:
            batch.leave(lambda row: row.request.over)
        self._batches = [batch for batch in self._batches if batch.live]
        self._to_prefill = collections.deque(row for row in self._to_prefill if not row.request.over)

    def _admit(self, events: list) -> None:
        with self._lock:
            room = self.max_batch - self.active_rows
            while self._pending and room > 0:
                request = self._pending[0]
                row = request.rows[request.admitted]
                request.admitted += 1
                if request.admitted == len(request.rows):
                    self._pending.popleft()
                if row.policy.done:  # max_tokens 0
                    events.append((request, Finished(row.index, "", "length", 0, time.perf_counter())))
                    continue
                self._to_prefill.append(row)
                room -= 1

    def _decode_and_prefill(self, events: list) -> list[tuple[_Row, np.ndarray]]:
        """One decode step of every batch, then prefills within the budget: each row's (1, vocab) logits."""
        sampled = []
        for batch in self._batches:
            try:
                sampled += batch.decode(self.backend)
            except Exception as error:  # onnxruntime's own exception types
                for row in batch.live:
                    self._fail(row.request, f"the model failed: {first_line(error)}", events)
        sampled += self._prefill(events)
        return sampled

    def _prefill(self, events: list) -> list[tuple[_Row, np.ndarray]]:
        """Prefill waiting rows, alone or with rows of the same length (no padding), within the budget.

        A row whose cache length does not line up with the largest batch's, modulo the quantum,
        waits up to quantum - 1 steps: that batch grows by a token a step, so it soon does, and
        the rows then decode in one model call rather than one call per residue.
        """
        quantum = self.quantum
        widest = max(self._batches, key=lambda batch: len(batch.live), default=None)
        ready: dict[int, list[_Row]] = {}
        later: collections.deque[_Row] = collections.deque()
        for row in self._to_prefill:
            if widest is None or len(row.window) % quantum == widest.width % quantum or row.waited >= quantum - 1:
                ready.setdefault(len(row.window), []).append(row)
            else:
                row.waited += 1
                later.append(row)
        sampled = []
        started = time.perf_counter()
        for length, rows in ready.items():
            if sampled and time.perf_counter() - started > PREFILL_BUDGET_S:
                later.extendleft(reversed(rows))  # first in line at the next step
                continue
            input_ids = np.array([row.window for row in rows], dtype=np.int64)
            mask = np.ones_like(input_ids)
            try:
                logits, past = self.backend.step(input_ids, mask, None)
            except Exception as error:
                for row in rows:
                    self._fail(row.request, f"the model failed: {first_line(error)}", events)
                continue
            for i, row in enumerate(rows):
                row.waited = 0
                self._prefilled.append((row, [array[i:i + 1] for array in past], mask[i:i + 1]))
                sampled.append((row, logits[i:i + 1]))
        self._to_prefill = later
        return sampled

    def _forward_windows(self, events: list) -> list[tuple[_Row, np.ndarray]]:
        """A model without a KV cache reads every row's whole window at every step, in one batch."""
        rows = list(self._to_prefill)
        if not rows:
            return []
        input_ids, mask = left_pad([row.window for row in rows])
        try:
            logits, _ = self.backend.step(input_ids, mask, None)
        except Exception as error:
            for row in rows:
                self._fail(row.request, f"the model failed: {first_line(error)}", events)
            return []
        return [(row, logits[i:i + 1]) for i, row in enumerate(rows)]

    def _rearrange(self, sampled: list[tuple[_Row, np.ndarray]]) -> None:
        """After sampling: finished rows leave, full windows slide, prefilled rows join a batch."""
        def gone(row: _Row) -> bool:
            return row.policy.done or row.request.over

        if not self.backend.uses_cache:
            self._to_prefill = collections.deque(row for row in self._to_prefill if not gone(row))
            return
        for batch in self._batches:
            for row in batch.leave(lambda row: gone(row) or row.policy.slide_due):
                if not gone(row):  # its cache is full: keep half the window and prefill it again
                    row.policy.slide()
                    self._to_prefill.append(row)
        joining = []
        for row, past, mask in self._prefilled:
            if gone(row):
                continue
            if row.policy.slide_due:  # a prompt of block_size tokens slides at once
                row.policy.slide()
                self._to_prefill.append(row)
            else:
                joining.append((row, past, mask))
        self._prefilled = []
        self._join(joining)
        self._batches = [batch for batch in self._batches if batch.live]
        for batch in self._batches:
            batch.trim(self.quantum)

    def _join(self, joining: list[tuple[_Row, list[np.ndarray], np.ndarray]]) -> None:
        """Each prefilled row joins the batch whose cache length is its own modulo the quantum, so
        that it is only ever padded by a multiple of the quantum."""
        groups: dict[int, list] = collections.defaultdict(list)
        for entry in joining:
            groups[entry[2].shape[1] % self.quantum].append(entry)
        for residue, entries in groups.items():
            batch = next((b for b in self._batches if b.width % self.quantum == residue), None)
            if batch is None:
                batch = _Batch(state=self.backend.cache_kind == "state")
                self._batches.append(batch)
            batch.join(entries)

    def _fail(self, request: Request, message: str, events: list, bad_request: bool = False) -> None:
        if not request.failed:
            request.failed = True
            events.append((request, Failed(message, bad_request)))

    def _fail_everything(self, message: str) -> None:
        events: list = []
        rows = [row for batch in self._batches for row in batch.live] + list(self._to_prefill)
        for request in {id(row.request): row.request for row in rows}.values():
            self._fail(request, message, events)
        self._batches, self._to_prefill, self._prefilled = [], collections.deque(), []
        self.publish(events)


def deliver_each(events: list) -> None:
    for request, event in events:
        request.deliver(event)


# --- how far padding may go -------------------------------------------------------------


def exact_padding_quantum(backend, candidates: Sequence[int] = QUANTUM_CANDIDATES, seed: int = 0) -> int | None:
    """The smallest number of cache columns q such that a row left-padded by a multiple of q
    decodes to bitwise the logits it gets alone, on this machine's kernels; None if no candidate does.

    For each candidate it decodes, in one batch, rows whose caches are shorter than the
    longest by 0, q, 2q, ... tokens, padded on the left, for two cache lengths modulo q, and
    compares every row with the same row decoded alone.
    """
    longest = backend.block_size - 1  # the longest cache a decode step reads
    if longest < 2:
        return 1
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, backend.vocab_size, size=longest).tolist()
    next_token = np.array([[int(rng.integers(0, backend.vocab_size))]], dtype=np.int64)
    alone: dict[int, tuple] = {}
    # Rows of one length prefill together, unpadded: each must get what it gets alone.
    pair = np.array([ids[:3], ids[-3:]], dtype=np.int64)
    together, _ = backend.step(pair, np.ones_like(pair), None)
    if not all(np.array_equal(together[i], backend.step(pair[i:i + 1], np.ones_like(pair[i:i + 1]), None)[0][0])
               for i in range(2)):
        return None

    def prefill(length: int):
        if length not in alone:
            input_ids, mask = left_pad([ids[-length:]])
            _, past = backend.step(input_ids, mask, None)
            decoded, _ = backend.step(next_token, np.ones((1, length + 1), dtype=np.int64), past)
            alone[length] = (past, mask, decoded[0])
        return alone[length]

    for quantum in candidates:
        exact = True
        for widest in (longest, longest - 1):
            lengths = list(range(widest, 0, -quantum))[:12]
            batch = _Batch(state=backend.cache_kind == "state")
            batch.join([(f"probe row of {length}", *prefill(length)[:2]) for length in lengths])
            mask = np.concatenate([batch.mask, np.ones((len(lengths), 1), dtype=np.int64)], axis=1)
            logits, _ = backend.step(np.repeat(next_token, len(lengths), axis=0), mask, batch.past)
            exact = all(np.array_equal(logits[i], prefill(length)[2]) for i, length in enumerate(lengths))
            if not exact:
                break
        if exact:
            return quantum
    return None
