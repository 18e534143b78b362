"""OpenAI's completions API on gen: a request's JSON checked and turned into scheduler choices,
and the shapes of responses, stream chunks and errors (no torch, no web framework).

Fields map onto gen's sampler recipes (gen.core.sampling.SamplerRecipe), built from the typed
fields without going through spec text:

| OpenAI field | gen |
| --- | --- |
| `presence_penalty`, `frequency_penalty` | `penalties:presence=P,frequency=F`, first in the chain |
| `temperature` | `temperature:t=T`; 0 is `greedy` |
| `top_p` | `top_p:p=P`, after the temperature |
| `sampler` (extension) | a list of `--sampler` specs that replaces what temperature and top_p build |
| `logit_bias` | `{"token id": bias}`, added before the chain (gen.core.LogitBias) |
| `seed` | choice k of the request draws with `np.random.default_rng(seed + k)` |

So choice k's text is what `gen run MODEL --prompt P --sampler ... --seed (seed + k)
--max-new-tokens max_tokens` prints after the prompt. A request without a seed gets a
random one, returned in the response's `seed` field (an extension, as is `sampler`, the
chain that ran).
"""
from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass

from gen.core.errors import GenError
from gen.core.generation import TokenChoice
from gen.core.sampling import SamplerRecipe, Sampling
from gen.runtime.scheduler import Choice

DEFAULT_MAX_TOKENS = 16  # OpenAI's default
MAX_STOP_STRINGS = 4  # as OpenAI
FIELDS = (
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options",
    "logprobs", "logit_bias", "presence_penalty", "frequency_penalty", "echo", "best_of", "suffix", "user",
    "sampler",
)


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.type = type

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": None}}


@dataclass
class Limits:
    """What one request may ask of the server."""

    max_tokens: int = 4096  # per choice
    max_prompt_tokens: int = 4096  # per prompt
    max_choices: int = 64  # prompts x n
    max_logprobs: int = 20  # alternatives per token
    max_samplers: int = 16  # specs in `sampler`
    # What bounds the work of preparing a request (its rows' prompts, stop tables and biases):
    max_request_prompt_tokens: int = 65536  # prompt tokens x n, over every prompt
    max_stop_chars: int = 4096  # the characters of every stop string together
    max_logit_bias: int = 1024  # entries in logit_bias


@dataclass
class CompletionRequest:
    """A checked request: the prompts, and one scheduler Choice per (prompt, n) in OpenAI's order."""

    prompts: list[str]  # each prompt as text (token-id prompts decoded), for echo and text offsets
    prompt_tokens: list[int]  # each prompt's length in tokens
    choices: list[Choice]  # choice k = prompt k // n, sample k % n
    sampler: list[str]  # the specs of the chain that runs, for the response
    seed: int
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None
    n: int = 1  # completions per prompt

    def prompt_of(self, choice: int) -> str:
        """The prompt that choice number `choice` continues."""
        return self.prompts[choice // self.n]


# --- reading the request -------------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object (NaN and Infinity are not JSON, so they are refused)."""
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise APIError(f"the request body is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise APIError(f"the request body must be a JSON object, not {_json_type(document)}")
    return document


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(f"{name} must be a number, got {_json_type(value)}", name)
    if not low <= value <= high:
        raise APIError(f"{name} must be between {low:g} and {high:g}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str, default, low: int, high: int | None = None, limit_hint: str = ""):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(f"{name} must be an integer, got {_json_type(value)}", name)
    if value < low:
        raise APIError(f"{name} must be at least {low}, got {value}", name)
    if high is not None and value > high:
        raise APIError(f"{name} is {value}, over this server's limit of {high}{limit_hint}", name)
    return value


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise APIError(f"{name} must be true or false, got {_json_type(value)}", name)
    return value


def _prompts(body: dict, tokenizer, limits: Limits) -> tuple[list[str], list[list[int]]]:
    """The prompts as text and as token ids: a string, a list of strings, a list of token ids,
    or a list of lists of token ids."""
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError("prompt is required: a string, a list of strings, or token ids", "prompt")
    if isinstance(prompt, str):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
        items = [prompt]  # one prompt given as token ids
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise APIError(f"prompt must be a string, a list of strings or token ids, got {_json_type(prompt)}"
                       f"{' (empty)' if prompt == [] else ''}", "prompt")
    texts, ids = [], []
    for index, item in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt {index}"
        if isinstance(item, str):
            if item == "":
                raise APIError(f"{where} is empty; give at least one character", "prompt")
            try:
                item_ids = tokenizer.encode(item)
            except GenError as error:
                raise APIError(f"{where} cannot be encoded by this model's tokenizer: {error}", "prompt") from None
            text = item
        elif isinstance(item, list) and item and all(isinstance(x, int) and not isinstance(x, bool) for x in item):
            bad = [x for x in item if not 0 <= x < tokenizer.vocab_size]
            if bad:
                raise APIError(f"{where} has token id {bad[0]}, outside the vocabulary (0 to "
                               f"{tokenizer.vocab_size - 1})", "prompt")
            item_ids, text = list(item), tokenizer.decode(item)
        else:
            raise APIError(f"{where} must be a string or a non-empty list of token ids, got {_json_type(item)}",
                           "prompt")
        if len(item_ids) > limits.max_prompt_tokens:
            raise APIError(f"{where} is {len(item_ids)} tokens, over this server's limit of "
                           f"{limits.max_prompt_tokens} (gen serve --max-prompt-tokens)", "prompt")
        texts.append(text)
        ids.append(item_ids)
    return texts, ids


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
        raise APIError(f"stop must be a string or a list of strings, got {_json_type(stop)}", "stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise APIError(f"stop has {len(stop)} strings; give at most {MAX_STOP_STRINGS}", "stop")
    return stop


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise APIError(f'logit_bias must be an object like {{"42": -100}}, got {_json_type(bias)}', "logit_bias")
    biases = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or not 0 <= int(key) < vocab_size:
            raise APIError(f"logit_bias key {key!r} is not a token id (0 to {vocab_size - 1}, as a string)",
                           "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise APIError(f"logit_bias for token {key} must be a number from -100 to 100, got {value!r}",
                           "logit_bias")
        biases[int(key)] = float(value)
    return biases


def sampler_recipes(body: dict, limits: Limits) -> list[SamplerRecipe]:
    """The sampler chain a request asks for: its `sampler` field (a list of `--sampler` specs), or
    what temperature and top_p build; the OpenAI penalties, when set, come first. Typed fields
    become recipes directly; only the `sampler` list is parsed."""
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    presence = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
    frequency = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
    recipes = []
    if presence or frequency:
        recipes.append(SamplerRecipe.of("penalties", presence=presence, frequency=frequency))
    sampler = body.get("sampler")
    if sampler is not None:
        if not isinstance(sampler, list) or not all(isinstance(spec, str) for spec in sampler):
            raise APIError(f'sampler must be a list of --sampler specs like ["top_k:k=40", "temperature:t=0.8"], '
                           f"got {_json_type(sampler)}", "sampler")
        if len(sampler) > limits.max_samplers:
            raise APIError(f"sampler has {len(sampler)} specs; give at most {limits.max_samplers}", "sampler")
        return recipes + [SamplerRecipe.parse(spec) for spec in sampler]
    if temperature == 0:
        return recipes + [SamplerRecipe.of("greedy")]
    if top_p == 0:
        raise APIError("top_p must be above 0 (0 would keep no token)", "top_p")
    if temperature != 1:
        recipes.append(SamplerRecipe.of("temperature", t=temperature))
    if top_p != 1:
        recipes.append(SamplerRecipe.of("top_p", p=top_p))
    return recipes


def parse_completion_request(body: bytes | dict, tokenizer, vocab_size: int, limits: Limits) -> CompletionRequest:
    """Check a POST /v1/completions body; every problem is an APIError naming the field."""
    document = parse_json(body) if isinstance(body, (bytes, str)) else body
    unknown = [name for name in document if name not in FIELDS]
    if unknown:
        raise APIError(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}", unknown[0])
    if document.get("model") is not None and not isinstance(document["model"], str):
        raise APIError(f"model must be a string, got {_json_type(document['model'])}", "model")
    if document.get("suffix") is not None:
        raise APIError("suffix (text after the completion) is not supported by this server", "suffix")
    if document.get("user") is not None and not isinstance(document["user"], str):
        raise APIError(f"user must be a string, got {_json_type(document['user'])}", "user")
    prompts, prompt_ids = _prompts(document, tokenizer, limits)
    max_tokens = _integer(document, "max_tokens", DEFAULT_MAX_TOKENS, 0, limits.max_tokens,
                          " (gen serve --max-tokens-limit)")
    n = _integer(document, "n", 1, 1)
    best_of = _integer(document, "best_of", n, 1)
    if best_of != n:
        raise APIError("best_of other than n is not supported by this server", "best_of")
    if len(prompts) * n > limits.max_choices:
        raise APIError(f"{len(prompts)} prompt(s) x n={n} ask for {len(prompts) * n} completions; this server "
                       f"makes at most {limits.max_choices} per request (gen serve --max-choices)", "n")
    check_request_work(document, prompt_ids, n, limits)
    seed = _integer(document, "seed", None, 0)
    if seed is None:
        seed = secrets.randbits(32)
    logprobs = _integer(document, "logprobs", None, 0, limits.max_logprobs)
    stream = _boolean(document, "stream")
    options = document.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise APIError('stream_options must be {"include_usage": true or false}', "stream_options")
    include_usage = _boolean(options or {}, "include_usage")
    stop = _stop(document)
    logit_bias = _logit_bias(document, vocab_size)
    try:
        sampling = Sampling(sampler_recipes(document, limits), logit_bias)  # an unknown sampler or option fails here
    except GenError as error:
        raise APIError(str(error), "sampler" if document.get("sampler") is not None else None) from None
    choices = [
        Choice(ids, sampling, seed + prompt_index * n + sample, max_tokens, stop, logprobs)
        for prompt_index, ids in enumerate(prompt_ids)
        for sample in range(n)
    ]
    return CompletionRequest(prompts, [len(ids) for ids in prompt_ids], choices, sampling.specs, seed, stream,
                             include_usage, _boolean(document, "echo"), logprobs, n)


def check_request_work(document: dict, prompt_ids: list[list[int]], n: int, limits: Limits) -> None:
    """Refuse a request whose preparation or rows would take more than this server allows:
    prompt tokens x n (every row holds its prompt), the stop strings' characters (every row
    matches them), logit_bias entries. Fields of the wrong type are left to their own checks."""
    prompt_tokens = n * sum(len(ids) for ids in prompt_ids)
    if prompt_tokens > limits.max_request_prompt_tokens:
        raise APIError(f"the prompts hold {prompt_tokens} tokens with n={n}; this server takes at most "
                       f"{limits.max_request_prompt_tokens} per request (gen serve --max-request-prompt-tokens)",
                       "prompt")
    stop = document.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if isinstance(stop, list):
        characters = sum(len(item) for item in stop if isinstance(item, str))
        if characters > limits.max_stop_chars:
            raise APIError(f"the stop strings hold {characters} characters; this server takes at most "
                           f"{limits.max_stop_chars} (gen serve --max-stop-chars)", "stop")
    bias = document.get("logit_bias")
    if isinstance(bias, dict) and len(bias) > limits.max_logit_bias:
        raise APIError(f"logit_bias has {len(bias)} entries; this server takes at most {limits.max_logit_bias} "
                       f"(gen serve --max-logit-bias)", "logit_bias")


# --- writing the response --------------------------------------------------------------


class LogprobsWriter:
    """OpenAI's completions `logprobs` object for the tokens of one choice, with text offsets
    counted from the start of the prompt."""

    def __init__(self, start: int):
        self.offset = start

    def write(self, tokens: list[TokenChoice]) -> dict:
        document = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token in tokens:
            document["tokens"].append(token.text)
            document["token_logprobs"].append(token.logprob)
            top: dict[str, float] = {}
            for alternative in token.top:
                top.setdefault(alternative.text, alternative.logprob)  # tokens with the same text: the likelier
            document["top_logprobs"].append(top)
            document["text_offset"].append(self.offset)
            self.offset += len(token.text)
        return document


def dumps(document) -> str:
    """Compact JSON."""
    return json.dumps(document, separators=(",", ":"))


class StreamChunks:
    """The server-sent events of one streamed completion: `data: {completion with one choice}`
    lines, the usage, then `data: [DONE]`. The part every chunk shares is encoded once."""

    DONE = "data: [DONE]\n\n"

    def __init__(self, request_id: str, created: int, model: str):
        shared = dumps(completion_object(request_id, created, model, []))
        self.head = "data: " + shared[:shared.rindex('"choices"')]

    def choice(self, index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> str:
        return f'{self.head}"choices":[{dumps(choice_object(index, text, logprobs, finish_reason))}]}}\n\n'

    def usage(self, usage: dict) -> str:
        return f'{self.head}"choices":[],"usage":{dumps(usage)}}}\n\n'

    @staticmethod
    def error(error: "APIError") -> str:
        return f"data: {dumps(error.to_json())}\n\n"


def completion_object(request_id: str, created: int, model: str, choices: list[dict], **extra) -> dict:
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, **extra}


def choice_object(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
