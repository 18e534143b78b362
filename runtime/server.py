"""`gen serve`: OpenAI's completions API, the playground page and metrics over HTTP, on
Starlette and uvicorn (the `serve` extra), without torch.

    app = create_app(OnnxModel("model.onnx"))     # an ASGI application
    serve("model.onnx", host="127.0.0.1", port=8000)  # what `gen serve` runs

Routes: POST /v1/completions and /v1/chat/completions, GET /v1/models and /v1/models/{id}, GET
/v1/samplers, POST /tokenize and /detokenize and GET /tokenizer_info (vLLM's), POST /attention
(gen's: a prompt's attention weights, for the playground), GET /health, GET /metrics, GET / (the
playground) and its script and style under /playground/.
Each route has its handler here, a function of the request that finds what it shares with
the others (the model, scheduler, metrics, limits) in the app's ServerState,
`request.app.state.server`; `create_app` only wires them together, behind three checks
that keep the server to its users: the Host header (TrustedHosts, against DNS rebinding),
CORS (off unless origins are named) and the API key (RequireAPIKey: every route but
/health and the playground's page and files, which hold no data). A completion's body must
be JSON, declared so: a page on another origin can send a `text/plain` POST without asking.

The handlers run on the event loop and never call the model. A request is parsed (its
prompts tokenized, a chat rendered) and its rows made (Scheduler.submit) on a worker thread,
so that a large one delays neither the loop nor the scheduler; an echoed prompt is scored
(its logprobs) on a worker thread too. The scheduler's thread batches every running
generation into one decode step and sends each request its events; the loop only turns
events into JSON or server-sent events. The fields and their mapping onto gen's samplers are
in gen.runtime.api; chat templates in gen.runtime.chat.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import html
import importlib.resources
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

import click
import h11
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gen.core.errors import GenError, first_line
from gen.core.colours import PROBABILITY_COLOURS
from gen.core.registry import get_registry
from gen.core.sampling import LogitsFilter
from gen.runtime.api import (
    APIError,
    CompletionRequest,
    Limits,
    StreamChunks,
    choice_object,
    completion_object,
    dumps,
    logprobs_writer,
    parse_attention_request,
    parse_chat_request,
    parse_completion_request,
    parse_detokenize_request,
    parse_json,
    parse_tokenize_request,
    prompt_token_choices,
    usage_object,
)
from gen.runtime.chat import ChatTemplate, ChatTemplateError
from gen.runtime.scheduler import Busy, Failed, Piece, Scheduler, deliver_each

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_GRACEFUL_TIMEOUT_S = 30.0  # how long a stopping server lets its requests finish
DEFAULT_HEADER_TIMEOUT_S = 10.0  # how long a connection may take to send a request's line and headers
RETRY_AFTER_S = 1  # what a 503 tells the client to wait
PLAYGROUND_FILES = {"playground.js": "text/javascript", "playground.css": "text/css"}  # served under /playground/
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # a loopback server's default --allowed-hosts
OUTCOMES = ("completed", "cancelled", "bad_request", "rejected", "failed")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """What GET /metrics reports, in a registry of its own (one per app)."""

    def __init__(self, scheduler: Scheduler):
        disable_created_metrics()  # the *_created series only repeat the start time
        self.registry = CollectorRegistry()
        self.requests = Counter("gen_requests", "Completion requests by outcome.", ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)  # every outcome shows, at 0 until it happens
        self.tokens = Counter("gen_tokens_generated", "Tokens generated, every choice counted.", registry=self.registry)
        Gauge("gen_queue_depth", "Requests waiting for room in the batch.",
              registry=self.registry).set_function(lambda: scheduler.queue_depth)
        Gauge("gen_active_rows", "Choices being generated now (rows in the batch or about to be prefilled).",
              registry=self.registry).set_function(lambda: scheduler.active_rows)
        self.batch_size = Histogram("gen_batch_size", "Rows sampled per scheduler step.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.time_to_first_token = Histogram(
            "gen_time_to_first_token_seconds", "From a request's arrival to its first token.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram(
            "gen_inter_token_latency_seconds", "Between two tokens of one choice.",
            buckets=LATENCY_BUCKETS, registry=self.registry)


class Progress:
    """One request's choices as its events arrive: text, tokens, finish reasons, timings."""

    def __init__(self, parsed: CompletionRequest, metrics: Metrics, arrived: float,
                 prompt_scores: list[list] | None = None):
        count = len(parsed.choices)
        self.parsed = parsed
        self.metrics = metrics
        self.arrived = arrived
        self.texts: list[list[str]] = [[] for _ in range(count)]
        self.all_tokens: list[list] = [[] for _ in range(count)]
        self.finish: list[str | None] = [None] * count
        self.tokens = [0] * count
        self.last_token_at: list[float | None] = [None] * count
        self.first_token_seen = False
        self.error: APIError | None = None  # what ends the request instead of its choices
        # Per prompt, its tokens scored (echo with logprobs): they come first in each of its choices' logprobs.
        self.prompt_scores = prompt_scores
        self.logprobs = [logprobs_writer(parsed, k, echoed_prompt=prompt_scores is not None) for k in range(count)]

    def prompt_logprobs(self, choice: int) -> dict | None:
        """The echoed prompt's logprobs of a streamed choice, before its generated tokens' (None: not asked)."""
        if self.prompt_scores is None:
            return None
        return self.logprobs[choice].write(self.prompt_scores[choice // self.parsed.n])

    @property
    def done(self) -> bool:
        return self.error is not None or all(reason is not None for reason in self.finish)

    def take(self, events: list) -> dict[int, tuple[str, list, str | None]]:
        """Fold events in; return, per choice they touched, its new text, new tokens and finish reason."""
        changed: dict[int, tuple[str, list, str | None]] = {}
        for event in events:
            if isinstance(event, Failed):
                self.error = (APIError(event.message, "sampler") if event.bad_request else
                              APIError(event.message, status=500, type="server_error"))
                continue
            if isinstance(event, Ended):
                self.error = event.error
                continue
            k = event.choice
            text, tokens, finish = changed.get(k, ("", [], None))
            self.texts[k].append(event.text)
            if isinstance(event, Piece):
                self._timing(event)
                if event.token is not None:
                    tokens.append(event.token)
                    self.all_tokens[k].append(event.token)
            else:
                finish = self.finish[k] = event.reason
                self.tokens[k] = event.tokens
            changed[k] = (text + event.text, tokens, finish)
        return changed

    def _timing(self, piece: Piece) -> None:
        self.metrics.tokens.inc()
        if not self.first_token_seen:
            self.first_token_seen = True
            self.metrics.time_to_first_token.observe(piece.time - self.arrived)
        last = self.last_token_at[piece.choice]
        if last is not None:
            self.metrics.inter_token_latency.observe(piece.time - last)
        self.last_token_at[piece.choice] = piece.time

    def usage(self) -> dict:
        return usage_object(sum(self.parsed.prompt_tokens), sum(self.tokens))


@dataclass
class Ended:
    """Not the scheduler's event but the server's: it ended the request (it is stopping and
    the request outlasted --graceful-timeout), with this error for the client."""

    error: APIError


class Events:
    """The events the scheduler sends one request, received on the event loop. Putting one is
    an append (a collection of the Inbox puts every event of its steps); the reader, woken
    once, takes all that are there: it costs per collection, not per token."""

    def __init__(self):
        self.pending: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None  # the reader's, while it waits for an event

    def put(self, event) -> None:
        self.pending.append(event)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next_batch(self) -> list:
        """Wait for an event, then take every one already there: when the loop falls behind the
        scheduler, a chunk carries several tokens instead of the loop sending one write per token."""
        while not self.pending:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        events = list(self.pending)
        self.pending.clear()
        return events


class CodedAPIError(APIError):
    """An APIError with OpenAI's machine-readable `code` as well (invalid_api_key, model_not_found)."""

    def __init__(self, message: str, code: str, **details):
        super().__init__(message, **details)
        self.code = code

    def to_json(self) -> dict:
        document = super().to_json()
        document["error"]["code"] = self.code
        return document


def error_response(error: APIError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error.to_json(), status_code=error.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (before reading it, when the
    client says its length)."""
    declared = request.headers.get("content-length", "")
    too_big = APIError(f"the request body is over this server's limit of {limit} bytes (gen serve --max-body-bytes)",
                       status=413)
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (after the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sampler_listing() -> list[dict]:
    """Every registered sampler: name, options with defaults, description, who registered it,
    and whether it is a filter (may stand anywhere in a chain)."""
    registry = get_registry()
    samplers = []
    for name in registry.names("sampler"):
        entry = registry.entry("sampler", name)
        try:
            target = entry.load()
            options = entry.options_json()
        except GenError as error:
            samplers.append({"name": name, "provider": entry.provider, "description": entry.description,
                             "error": str(error)})
            continue
        is_filter = isinstance(target, type) and issubclass(target, LogitsFilter)
        samplers.append({"name": name, "provider": entry.provider, "description": entry.description,
                         "options": options, "kind": "filter" if is_filter else "sampler"})
    return samplers


# --- what the handlers share -----------------------------------------------------------


@dataclass
class ServerState:
    """Everything the handlers read, one per app, in `app.state.server`: the model and its
    names, the scheduler that runs it, the metrics, the limits on requests, and the
    completions running now (so that a server out of time to stop can end them)."""

    model: object  # a gen.runtime.OnnxModel
    model_names: tuple[str, ...]  # what a request's "model" may say; the first is the one reported
    created: int  # /v1/models' "created": when the model file was written
    scheduler: Scheduler
    metrics: Metrics
    limits: Limits
    max_body_bytes: int
    playground_page: str  # the playground's index.html, filled in for this model
    chat_template: ChatTemplate  # the export's, or gen.runtime.chat's plain default
    announce: Callable[[str, Scheduler], None] | None = None  # told "started" and "stopped" by the lifespan
    running: set = field(default_factory=set)  # the Completions on their way back to a client

    @classmethod
    def for_model(cls, model, *, model_names: Sequence[str] = (), max_batch: int = 32, max_queue: int = 256,
                  limits: Limits | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                  announce=None) -> ServerState:
        """The state of a server of `model` (called by its file name unless `model_names` are
        given); its scheduler is made here and started by the lifespan."""
        model_names = tuple(model_names) or (os.path.basename(model.path),)
        scheduler = Scheduler(model, max_batch=max_batch, max_queue=max_queue)
        metrics = Metrics(scheduler)
        scheduler.on_step = metrics.batch_size.observe
        return cls(model=model, model_names=model_names, created=int(os.path.getmtime(model.path)),
                   scheduler=scheduler, metrics=metrics, limits=limits or Limits(), max_body_bytes=max_body_bytes,
                   playground_page=playground_page(model_names[0]),
                   chat_template=ChatTemplate(model.artifact.chat_template), announce=announce)

    @property
    def model_name(self) -> str:
        """The name /v1/models lists first, the replies report and the playground shows."""
        return self.model_names[0]

    def end_running(self, error: APIError) -> None:
        """End every running completion with `error` (on the event loop): a streamed one sends
        it as its last event, a whole one answers it; their rows leave the batch."""
        for completion in list(self.running):
            completion.end(error)


def state_of(request: Request) -> ServerState:
    return request.app.state.server


def playground_page(model_name: str) -> str:
    """The playground's index.html for a model. Its name is a file name: escaped for HTML,
    and for the script as a JSON string that cannot close its <script> element."""
    page = importlib.resources.files("gen.runtime").joinpath("playground", "index.html").read_text("utf-8")
    return (page.replace("{{PROBABILITY_COLOURS}}", json.dumps(PROBABILITY_COLOURS))
            .replace("{{MODEL_JSON}}", json.dumps(model_name).replace("</", "<\\/"))
            .replace("{{MODEL}}", html.escape(model_name)))


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    """Run the scheduler thread while the app runs, its events delivered through an Inbox."""
    state: ServerState = app.state.server
    loop = asyncio.get_running_loop()
    state.scheduler.publish = Inbox(loop).publish
    state.scheduler.start()
    if state.announce is not None:
        state.announce("started", state.scheduler)
    try:
        yield
    finally:
        # uvicorn gets here after the requests in flight have finished.
        await loop.run_in_executor(None, state.scheduler.stop)
        if state.announce is not None:
            state.announce("stopped", state.scheduler)


# --- POST /v1/completions and /v1/chat/completions -------------------------------------------


async def completions(request: Request) -> Response:
    """POST /v1/completions: parse the request, hand its choices to the scheduler, answer whole or as a stream."""
    state = state_of(request)
    return await run_completion(request, lambda document: parse_completion_request(
        document, state.model.tokenizer, state.model.vocab_size, state.limits))


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions: the messages rendered by the model's chat template, then as a completion."""
    state = state_of(request)
    return await run_completion(request, lambda document: parse_chat_request(
        document, state.chat_template, state.model.tokenizer, state.model.vocab_size, state.limits))


async def run_completion(request: Request, parse: Callable[[dict], CompletionRequest]) -> Response:
    """Read and parse (`parse`: the JSON body -> a CompletionRequest) a completion request, score
    its prompts when it echoes them with logprobs, hand its choices to the scheduler, and answer
    whole or as a stream."""
    state = state_of(request)
    arrived = time.perf_counter()
    try:
        require_json(request)
        document = parse_json(await read_body(request, state.max_body_bytes))
        require_served_model(document.get("model"), state.model_names)
        parsed = await off_the_loop(parse, document)  # tokenizing and chat templates: a worker thread
    except (APIError, ChatTemplateError) as error:
        state.metrics.requests.labels("bad_request").inc()
        return error_response(error if isinstance(error, APIError) else APIError(str(error), "messages"))
    prompt_scores = None
    if parsed.echo and parsed.logprobs is not None:
        # The model's logits over each prompt, in a worker thread: the scheduler's rows go on meanwhile.
        prompt_scores = [await off_the_loop(prompt_token_choices, state.model, ids, parsed.logprobs)
                         for ids in parsed.prompt_ids]
    events = Events()
    try:
        handle = await off_the_loop(submit_prepared, state.scheduler, parsed, events.put)
    except APIError as error:
        state.metrics.requests.labels("bad_request").inc()
        return error_response(error)
    except Busy as busy:
        state.metrics.requests.labels("rejected").inc()
        error = APIError(f"the server is busy: {busy}; retry in {RETRY_AFTER_S} s", status=503,
                         type="server_overloaded")
        return error_response(error, headers={"Retry-After": str(RETRY_AFTER_S)})
    completion = Completion(state, handle, events, Progress(parsed, state.metrics, arrived, prompt_scores))
    if parsed.stream:
        return StreamingResponse(completion.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await completion.whole(request)


async def off_the_loop(function, *args):
    """`function(*args)` on a worker thread: preparing a request (tokenizing its prompts, its
    rows' stop tables and sampler chains) takes time in proportion to the request, and neither
    the event loop nor the scheduler thread, which serve every other client, waits for it."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args))


def submit_prepared(scheduler: Scheduler, parsed: CompletionRequest, deliver) -> object:
    """Make the request's rows and queue them (Scheduler.submit, on the calling thread); a
    choice whose sampler chain cannot be made is the request's fault, a 400."""
    try:
        return scheduler.submit(parsed.choices, deliver)
    except GenError as error:
        raise APIError(str(error), "sampler") from None


def require_json(request: Request) -> None:
    """Refuse a body not declared as JSON with 415: a page on another origin may POST
    `text/plain` without the browser asking this server first (CORS), but not JSON."""
    declared = request.headers.get("content-type", "")
    if declared.split(";")[0].strip().lower() != "application/json":
        raise APIError(f"{request.method} {request.url.path} takes a JSON body sent with Content-Type: "
                       f"application/json, not {declared or 'no Content-Type'}", status=415)


def require_served_model(model, model_names: tuple[str, ...]) -> None:
    """A request naming a model this server does not serve is a 404, as OpenAI answers it (a
    request without a model, or whose model is not a string, is left to the request's checks)."""
    if isinstance(model, str) and model not in model_names:
        served = ", ".join(repr(name) for name in model_names)
        raise CodedAPIError(f"the model {model!r} is not served here; this server serves {served} "
                            f"(gen serve --served-model-name)", "model_not_found", param="model", status=404)


class Completion:
    """One request the scheduler took, on its way back to the client: whole or streamed.
    Either way, a client that leaves cancels it, and its outcome is counted once. While it
    runs it is in the state's `running`, where a stopping server may `end` it."""

    def __init__(self, state: ServerState, handle, events: Events, progress: Progress):
        self.state = state
        self.handle = handle  # the scheduler's, to cancel it
        self.events = events
        self.progress = progress
        self.id = f"{'chatcmpl' if progress.parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        state.running.add(self)

    def count(self, outcome: str) -> None:
        self.state.running.discard(self)
        self.state.metrics.requests.labels(outcome).inc()

    def end(self, error: APIError) -> None:
        """End it with `error` for the client (on the event loop), its rows freed at the next step."""
        self.handle.cancel()
        self.events.put(Ended(error))

    async def whole(self, request: Request) -> Response:
        """Collect every choice's text; a client that leaves meanwhile cancels the request."""
        progress = self.progress

        async def collect():
            while not progress.done:
                progress.take(await self.events.next_batch())

        collecting = asyncio.ensure_future(collect())
        leaving = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
        if not collecting.done():
            collecting.cancel()
            self.handle.cancel()
            self.count("cancelled")
            return Response(status_code=499)  # nobody reads it; the client has gone
        if progress.error is not None:
            self.handle.cancel()
            self.count("bad_request" if progress.error.status == 400 else "failed")
            return error_response(progress.error)
        parsed = progress.parsed
        choices = []
        for k, pieces in enumerate(progress.texts):
            text = "".join(pieces)
            if parsed.echo:
                text = parsed.prompt_of(k) + text
            choices.append(choice_object(k, text, None, progress.finish[k], parsed.chat))
        if parsed.logprobs is not None:
            for k, (choice, writer, tokens) in enumerate(zip(choices, progress.logprobs, progress.all_tokens)):
                prompt = progress.prompt_scores[k // parsed.n] if progress.prompt_scores is not None else []
                choice["logprobs"] = writer.write(prompt + tokens)
        self.count("completed")
        return JSONResponse(completion_object(self.id, self.created, self.state.model_name, choices, parsed.chat,
                                              usage=progress.usage(), seed=parsed.seed, sampler=parsed.sampler))

    async def stream(self):
        """Server-sent events: a chunk per choice per batch of events, then usage if asked, then [DONE]."""
        progress = self.progress
        parsed = progress.parsed
        sse = StreamChunks(self.id, self.created, self.state.model_name, parsed.chat)
        outcome = "cancelled"  # unless it gets to the end
        try:
            if parsed.echo:
                yield "".join(sse.choice(k, parsed.prompt_of(k), progress.prompt_logprobs(k), None)
                              for k in range(len(parsed.choices)))
            while not progress.done:
                changed = progress.take(await self.events.next_batch())
                if progress.error is not None:
                    outcome = "bad_request" if progress.error.status == 400 else "failed"
                    yield sse.error(progress.error)
                    return
                chunks = []
                for k, (text, tokens, finish) in sorted(changed.items()):
                    if not text and not tokens and finish is None:
                        continue  # a token whose text is held back (a possible stop string)
                    logprobs = progress.logprobs[k].write(tokens) if parsed.logprobs is not None else None
                    chunks.append(sse.choice(k, text, logprobs, finish))
                if chunks:
                    yield "".join(chunks)
            yield (sse.usage(progress.usage()) if parsed.include_usage else "") + sse.DONE
            outcome = "completed"
        finally:
            if outcome != "completed":
                self.handle.cancel()  # the client left mid-stream: free its rows at the next step
            self.count(outcome)


# --- the tokenizer (vLLM's routes, which lm-evaluation-harness probes) ---------------------------


async def tokenize(request: Request) -> Response:
    """POST /tokenize: {"prompt": text} -> {"tokens", "count", "max_model_len"}."""
    state = state_of(request)
    try:
        require_json(request)
        ids = parse_tokenize_request(parse_json(await read_body(request, state.max_body_bytes)),
                                     state.model.tokenizer, state.limits)
    except APIError as error:
        return error_response(error)
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": state.model.block_size})


async def detokenize(request: Request) -> Response:
    """POST /detokenize: {"tokens": [ids]} -> {"prompt": text}."""
    state = state_of(request)
    try:
        require_json(request)
        ids = parse_detokenize_request(parse_json(await read_body(request, state.max_body_bytes)),
                                       state.model.vocab_size)
    except APIError as error:
        return error_response(error)
    return JSONResponse({"prompt": state.model.tokenizer.decode(ids)})


async def tokenizer_info(request: Request) -> Response:
    """GET /tokenizer_info: what vLLM reports of its tokenizer that gen can say. gen's tokenizers
    have no special tokens (no end of text: a reply ends at max_tokens or a stop string)."""
    state = state_of(request)
    return JSONResponse({
        "tokenizer_class": state.model.artifact.tokenizer.get("name"), "vocab_size": state.model.vocab_size,
        "model_max_length": state.model.block_size, "eos_token": None, "bos_token": None, "pad_token": None,
        "unk_token": None, "add_bos_token": False, "add_eos_token": False,
        "chat_template": state.chat_template.source,
    })


# --- attention (gen's own, for the playground's panel) ----------------------------------------


async def attention(request: Request) -> Response:
    """POST /attention: a prompt's attention weights from an export made with gen export --attention
    (the fields and answer are in gen.runtime.api). The model runs once, on a worker thread."""
    state = state_of(request)
    try:
        require_json(request)
        if not getattr(state.model, "has_attention", False):
            raise APIError("this export has no attention outputs; export it again with gen export --attention",
                           "prompt")
        body = parse_json(await read_body(request, state.max_body_bytes))
        ids, offset, position = await off_the_loop(parse_attention_request, body, state.model.tokenizer,
                                                   state.model.block_size, state.limits)
    except APIError as error:
        return error_response(error)
    weights = await off_the_loop(state.model.attention, ids)  # (n_layer, n_head, T, T)
    tokenizer = state.model.tokenizer
    selected = weights[:, :, position, :position + 1] if position is not None else weights
    return JSONResponse({
        "object": "attention", "tokens": [tokenizer.decode([token]) for token in ids], "offset": offset,
        "n_layer": int(weights.shape[0]), "n_head": int(weights.shape[1]), "position": position,
        "weights": selected.round(6).tolist(),
    })


# --- the other routes --------------------------------------------------------------------


def model_object(state: ServerState, name: str) -> dict:
    """The model served, by one of its names, with its context and vocabulary sizes."""
    return {"id": name, "object": "model", "created": state.created, "owned_by": "gen",
            "block_size": state.model.block_size, "vocab_size": state.model.vocab_size,
            "model": state.model.artifact.model.get("name")}


async def models(request: Request) -> Response:
    """GET /v1/models: the model served, once by each of its names."""
    state = state_of(request)
    return JSONResponse({"object": "list", "data": [model_object(state, name) for name in state.model_names]})


async def model(request: Request) -> Response:
    """GET /v1/models/{id}: the model by one of its names; 404 for another name."""
    state = state_of(request)
    try:
        require_served_model(request.path_params["model_id"], state.model_names)
    except APIError as error:
        return error_response(error)
    return JSONResponse(model_object(state, request.path_params["model_id"]))


async def samplers(request: Request) -> Response:
    """GET /v1/samplers: every registered sampler (see sampler_listing)."""
    return Response(dumps({"object": "list", "data": sampler_listing()}), media_type="application/json")


async def health(request: Request) -> Response:
    """GET /health: the scheduler's load and how it batches."""
    state = state_of(request)
    scheduler = state.scheduler
    return JSONResponse({"status": "ok", "model": state.model_name,
                         "queue_depth": scheduler.queue_depth, "active_rows": scheduler.active_rows,
                         "max_batch": scheduler.max_batch, "exact_batching": scheduler.exact})


async def prometheus(request: Request) -> Response:
    """GET /metrics: the app's metrics in Prometheus' text format."""
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def playground(request: Request) -> Response:
    """GET /: the playground page (its script and style are under /playground/)."""
    return HTMLResponse(state_of(request).playground_page)


async def playground_file(request: Request) -> Response:
    """GET /playground/NAME: the page's script or style, as the package holds them. Only
    these: index.html is the page's template, served filled in at / alone."""
    name = request.url.path.rsplit("/", 1)[1]
    text = importlib.resources.files("gen.runtime").joinpath("playground", name).read_text("utf-8")
    return Response(text, media_type=PLAYGROUND_FILES[name])


async def http_error(request: Request, error: HTTPException) -> Response:
    """An unknown route or a wrong method, in OpenAI's error shape."""
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {error.detail}"
    if error.status_code == 404:
        message += ("; the routes are POST /v1/completions, /v1/chat/completions, /tokenize, /detokenize, /attention, "
                    "GET /v1/models, /v1/samplers, /tokenizer_info, /health, /metrics, /")
    return error_response(APIError(message, status=error.status_code, type=kind), headers=error.headers)


async def server_error(request: Request, error: Exception) -> Response:
    """A bug: the traceback goes to the server's log, one line of it to the client."""
    traceback.print_exception(error, file=sys.stderr)
    name = type(error).__name__
    line = first_line(error)  # the type's name alone when the error has no message
    message = f"internal error: {name}" if line == name else f"internal error: {name}: {line}"
    return error_response(APIError(message, status=500, type="server_error"))


# --- who may use it: the Host header, CORS, the API key ----------------------------------


class TrustedHosts:
    """Starlette's TrustedHostMiddleware (a request whose Host header names none of
    `allowed_hosts` is refused: a DNS-rebinding page reaches the server under its own name),
    its refusal answered in OpenAI's error shape instead of plain text."""

    PASSED = "gen.host_allowed"  # set in the request's scope once the check let it through

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]):
        self.app = app
        self.check = TrustedHostMiddleware(self.passed, allowed_hosts=allowed_hosts, www_redirect=False)

    async def passed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[self.PASSED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_unless_refused(message) -> None:
            if scope.get(self.PASSED):
                await send(message)

        await self.check(scope, receive, send_unless_refused)
        if not scope.get(self.PASSED):  # Starlette's plain-text refusal went nowhere: ours instead
            host = Headers(scope=scope).get("host")
            error = APIError(f"this server does not answer to the host {host!r} (gen serve --allowed-hosts)",
                             status=400)
            await error_response(error)(scope, receive, send)


class RequireAPIKey:
    """Answer 401 to a request without one of `keys` as `Authorization: Bearer KEY` (what
    OpenAI's clients send), but on OPEN_PATHS: /health and the playground's page and files,
    which hold no data (the page asks for the key and sends it with its API calls)."""

    OPEN_PATHS = ("/", "/health", *(f"/playground/{name}" for name in PLAYGROUND_FILES))

    def __init__(self, app: ASGIApp, keys: Sequence[str]):
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.known(given.strip().encode()):
            await self.app(scope, receive, send)
            return
        message = ("the API key is not valid" if given else
                   "this server needs an API key, sent as the header Authorization: Bearer KEY")
        error = CodedAPIError(message, "invalid_api_key", status=401)
        await error_response(error, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)

    def known(self, given: bytes) -> bool:
        """Whether `given` is one of the keys, compared in constant time with each of them."""
        matches = [hmac.compare_digest(given, key) for key in self.keys]
        return any(matches)


def default_allowed_hosts(bound_host: str) -> list[str]:
    """The Host headers a server bound to `bound_host` answers by default: on a loopback
    address, only the loopback names (any port): a page that rebinds its own name to
    127.0.0.1 is refused; on any other address, every host (name it with --allowed-hosts)."""
    if not ipaddress.ip_address(bound_host).is_loopback:
        return ["*"]
    return [*LOOPBACK_HOSTS, f"[{bound_host}]" if ":" in bound_host else bound_host]


def create_app(generator, *, model_names: Sequence[str] = (), max_batch: int = 32, max_queue: int = 256,
               limits: Limits | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               api_keys: Sequence[str] = (), allowed_hosts: Sequence[str] = ("*",),
               cors_origins: Sequence[str] = (), announce=None) -> Starlette:
    """The ASGI app serving `generator` (a gen.runtime.OnnxModel). The scheduler thread starts
    and stops with the app's lifespan, which calls `announce("started" or "stopped", scheduler)`.
    With `api_keys`, requests need one of them; `allowed_hosts` are the Host headers answered
    (Starlette's patterns: "*", "*.example.com"); CORS is off unless `cors_origins` are named."""
    for pattern in allowed_hosts:  # Starlette's own check is an assert, at the first request
        if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
            raise GenError(f"--allowed-hosts {pattern!r}: a pattern is a host name, *.DOMAIN (its subdomains) or *")
    middleware = [Middleware(TrustedHosts, allowed_hosts=allowed_hosts)]
    if cors_origins:  # outside the key check: a browser's preflight carries no key
        middleware.append(Middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    if api_keys:
        middleware.append(Middleware(RequireAPIKey, keys=api_keys))
    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/detokenize", detokenize, methods=["POST"]),
            Route("/tokenizer_info", tokenizer_info, methods=["GET"]),
            Route("/attention", attention, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", model, methods=["GET"]),
            Route("/v1/samplers", samplers, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            Route("/", playground, methods=["GET"]),
            *(Route(f"/playground/{name}", playground_file, methods=["GET"]) for name in PLAYGROUND_FILES),
        ],
        middleware=middleware,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.server = ServerState.for_model(generator, model_names=model_names, max_batch=max_batch,
                                             max_queue=max_queue, limits=limits, max_body_bytes=max_body_bytes,
                                             announce=announce)
    return app


class Inbox:
    """Events from the scheduler thread into the event loop.

    Waking the loop is a write to its self-pipe, and that write returns only when the
    scheduler thread gets the GIL back from the woken loop, so waking it at every step would
    make each step wait for the loop to send its chunks. Instead, while events keep coming,
    the loop collects them every `POLL_SECONDS` on its own, each time taking every step
    published since (a chunk then carries several tokens); the scheduler wakes the loop
    when it has stopped collecting, after a quiet interval, and when a request ends: its
    client waits for the end before it sends its next request, so the end goes out at once.
    """

    POLL_SECONDS = 0.004  # far below the inter-token latency a client notices

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.steps: collections.deque[list] = collections.deque()
        self.lock = threading.Lock()  # makes "is the loop collecting?" and "anything new?" one question
        self.collecting = False
        self.woken = False  # a wake-up is on its way to the loop
        self.timer: asyncio.TimerHandle | None = None  # the loop's next collection

    def publish(self, events: list) -> None:  # on the scheduler thread
        if not events:
            return
        ends = any(not isinstance(event, Piece) for _, event in events)  # Finished or Failed
        with self.lock:
            self.steps.append(events)
            if self.woken or (self.collecting and not ends):
                return
            self.collecting = self.woken = True
        self.loop.call_soon_threadsafe(self.collect)

    def collect(self) -> None:  # on the loop, woken or on its timer
        if self.timer is not None:
            self.timer.cancel()  # one chain of collections, however it was woken
            self.timer = None
        with self.lock:
            self.woken = False
            steps, self.steps = self.steps, collections.deque()
            if not steps:
                self.collecting = False  # a quiet interval: the next publish wakes the loop
                return
        for events in steps:
            deliver_each(events)
        self.timer = self.loop.call_later(self.POLL_SECONDS, self.collect)


# --- running it ------------------------------------------------------------------------


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: any free port) and listening, or a GenError saying why not."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise GenError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --host or --port") \
            from None
    return sock


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), closing a connection whose request line and headers
    have not all arrived `header_timeout` seconds after it opened or after its last response.
    uvicorn times out only a keep-alive connection that sends nothing (timeout_keep_alive):
    a client that sends part of a header cancels that timer and holds the connection for ever.
    (Its `h11_max_incomplete_event_size` bounds a header's size, not its time.)"""

    header_timeout = DEFAULT_HEADER_TIMEOUT_S
    header_deadline: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type:
        return type(cls.__name__, (cls,), {"header_timeout": seconds})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._wait_for_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._wait_for_headers()

    def connection_lost(self, exc) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        super().connection_lost(exc)

    def _wait_for_headers(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self.header_deadline = None
        # IDLE: the client has not finished a request's head (h11 leaves IDLE once it has).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, stopped by SIGTERM or Ctrl-C: it stops accepting, lets the running
    requests finish for up to `graceful_timeout` seconds, then ends the rest with an error
    (a stream's last event, or a 503) rather than cutting their connections; a second Ctrl-C
    stops at once. uvicorn raises the signal again once it has stopped, which would end `gen
    serve` by SIGTERM or with click's "Aborted!" and exit 1: here a stop asked for is a clean exit."""

    END_GRACE_S = 5.0  # after ending the requests, how long uvicorn waits before cancelling what is left

    def __init__(self, config: uvicorn.Config, state: ServerState, graceful_timeout: float):
        config.timeout_graceful_shutdown = graceful_timeout + self.END_GRACE_S
        super().__init__(config)
        self.state = state
        self.graceful_timeout = graceful_timeout

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets=None) -> None:
        error = APIError(f"the server is stopping and this request outlasted its --graceful-timeout of "
                         f"{self.graceful_timeout:g} s; send it again once the server is back", status=503,
                         type="server_error")
        ending = asyncio.get_running_loop().call_later(self.graceful_timeout, self.state.end_running, error)
        try:
            await super().shutdown(sockets)
        finally:
            ending.cancel()


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32,
          max_queue: int = 256, threads: int | None = None, provider: str | None = None,
          limits: Limits | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          model_names: Sequence[str] = (), api_keys: Sequence[str] = (), allowed_hosts: Sequence[str] = (),
          cors_origins: Sequence[str] = (), graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT_S,
          header_timeout: float = DEFAULT_HEADER_TIMEOUT_S) -> None:
    """Serve a model until SIGTERM or Ctrl-C; then stop accepting, finish what runs (up to
    `graceful_timeout` seconds), and return. `allowed_hosts` default to default_allowed_hosts."""
    from gen.runtime.onnx_model import OnnxModel

    generator = OnnxModel(model_path, provider=provider, threads=threads)
    sock = listening_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
    if not api_keys and not ipaddress.ip_address(bound_host).is_loopback:
        click.echo(f"gen serve: warning: listening on {bound_host}, beyond this machine, without an API key: "
                   f"whoever reaches it can use it; give --api-key or --api-key-file", err=True)

    def announce(event: str, scheduler: Scheduler) -> None:
        if event == "stopped":
            click.echo("gen serve: stopped")
            return
        batching = (f"exact (caches padded in steps of {scheduler.quantum})" if scheduler.exact else
                    "texts equal their runs alone up to float rounding (no exact padding step found)")
        click.echo(f"gen serve: {model_path} at {url}  (OpenAI API: {url}/v1, playground: {url}/)")
        click.echo(f"gen serve: batches of up to {max_batch} rows, queue of {max_queue}; batching {batching}")
        if api_keys:
            click.echo(f"gen serve: requests need one of {len(api_keys)} API key(s) (Authorization: Bearer KEY)")

    app = create_app(generator, model_names=model_names, max_batch=max_batch, max_queue=max_queue, limits=limits,
                     max_body_bytes=max_body_bytes, api_keys=api_keys,
                     allowed_hosts=allowed_hosts or default_allowed_hosts(bound_host), cors_origins=cors_origins,
                     announce=announce)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            http=HeaderTimeoutProtocol.with_timeout(header_timeout))
    GracefulServer(config, app.state.server, graceful_timeout).run(sockets=[sock])
