"""OpenAI's completions API on gen: a request's JSON checked and turned into scheduler choices,
and the shapes of responses, stream chunks and errors (no torch, no web framework).

Fields map onto gen's sampler recipes (gen.core.sampling.SamplerRecipe), built from the typed
fields without going through spec text:

| field | gen, in the chain's order |
| --- | --- |
| `repetition_penalty` (vLLM) | `repetition_penalty:penalty=R`, first; 1 is none |
| `presence_penalty`, `frequency_penalty` | `penalties:presence=P,frequency=F` |
| `temperature` | `temperature:t=T`; 0 is `greedy` (and the three below change nothing) |
| `top_k` (vLLM) | `top_k:k=K`; -1 or 0 is none |
| `top_p` | `top_p:p=P` |
| `min_p` (vLLM) | `min_p:p=P`; 0 is none |
| `sampler` (extension) | a list of `--sampler` specs that replaces temperature, top_k, top_p and min_p (the penalties stay, before it) |
| `logit_bias` | `{"token id": bias}`, added before the chain (gen.core.LogitBias) |
| `seed` | choice k of the request draws with `np.random.default_rng(seed + k)` |

Constraints (gen.core.constraints), at most one per request, masked before the chain:

| field | constraint |
| --- | --- |
| `response_format` | OpenAI's `{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {"schema": ...}}` or `{"type": "text"}` (none) |
| `guided_regex`, `guided_json`, `guided_grammar` (vLLM) | a regular expression, a JSON Schema (object or text), a Lark or GBNF grammar |

POST /v1/chat/completions takes `messages` instead of `prompt` (rendered by the model's chat
template, gen.runtime.chat), `max_completion_tokens` or `max_tokens`, `logprobs` (true or
false) and `top_logprobs`, and the sampling fields above; no `echo`, `best_of` or `suffix`.

`removed_alternatives: true` (an extension, with `logprobs`) says why the draw could not pick
some of each token's alternatives: the logprobs object gets a list beside `top_logprobs`, per
token `{alternative: "constraint"}` for one the request's constraint masked out and `{alternative:
"filter"}` for one a filter of the sampler chain removed (the playground strikes them through).
Without it the logprobs object is OpenAI's.

`sampled_distribution: true` (an extension, with `logprobs`) adds what the sampler chain did to
each token's distribution: the logprobs object gets a list `sampled_distribution` beside
`top_logprobs`, per token the model's `logprobs` most likely tokens, each `{"token": id, "text",
"probability": under the model, "sampled_probability": under what the draw used (after the
constraint and the chain's filters; 0 for a removed token), "removed": null, "constraint" or
"filter"}`. The playground draws the two side by side (temperature sharpens, top_k cuts).

POST /attention (gen's own, for the playground; exports made with `gen export --attention`):
`{"prompt": text, "position": int (optional)}` runs the prompt's last block_size tokens through the
model once and answers `{"tokens": [each token's text], "offset": where the first of them starts in
the prompt, "n_layer", "n_head", "position", "weights"}`: with a position (negative counts from
the end, as in Python), `weights[layer][head]` is the list of weights that token gave each token up
to it; without one, `weights[layer][head][query]` holds every row (zero above the diagonal).

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

from gen.core.constraints import CompiledConstraint, Constraint
from gen.core.errors import GenError
from gen.core.generation import Alternative, TokenChoice
from gen.core.scoring import token_scores
from gen.core.sampling import SamplerRecipe, Sampling, shortcut_recipes
from gen.runtime.chat import ROLES
from gen.runtime.scheduler import Choice

DEFAULT_MAX_TOKENS = 16  # OpenAI's default
MAX_STOP_STRINGS = 4  # as OpenAI
# vLLM's sampling fields of the same meaning as one of gen's built-in samplers (vLLM has no
# n-gram ban, mirostat or typical sampling among its fields, so gen adds none for them).
VLLM_SAMPLING_FIELDS = ("top_k", "min_p", "repetition_penalty")
CONSTRAINT_FIELDS = ("response_format", "guided_regex", "guided_json", "guided_grammar")
FIELDS = (
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options",
    "logprobs", "logit_bias", "presence_penalty", "frequency_penalty", "echo", "best_of", "suffix", "user",
    "sampler", "removed_alternatives", "sampled_distribution", *VLLM_SAMPLING_FIELDS, *CONSTRAINT_FIELDS,
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
    chat: bool = False  # a chat completion: answered in chat's shapes
    prompt_ids: list[list[int]] | None = None  # each prompt's token ids
    removed_alternatives: bool = False  # say why alternatives could not be drawn (the extension)
    sampled_distribution: bool = False  # each token's top alternatives before and after the chain (the extension)

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
    except (ValueError, UnicodeDecodeError) as error:  # also an integer of more than 4,300 digits
        raise APIError(f"the request body is not valid JSON ({error})") from None
    except RecursionError:
        raise APIError("the request body nests arrays or objects too deeply to read") from None
    if not isinstance(document, dict):
        raise APIError(f"the request body must be a JSON object, not {_json_type(document)}")
    try:  # a \ud800 escape alone is JSON, but no text: it could not even be quoted in an error
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError("the request body has a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its "
                       "pair); send valid Unicode text") from None
    return document


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "a number beyond a double's range"  # 1e999: JSON, read as infinity
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(f"{name} must be a number, got {_json_type(value)}", name)
    if not math.isfinite(value):
        raise APIError(f"{name} must be a finite number, got {_json_type(value)}", name)
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
        # A token id has at most as many digits as the largest; int() of 5,000 digits is refused by Python.
        if not (key.isascii() and key.isdigit() and len(key) <= len(str(vocab_size))) \
                or not 0 <= int(key) < vocab_size:
            shown = key if len(key) <= 40 else f"{key[:20]}...({len(key):,} characters)"
            raise APIError(f"logit_bias key {shown!r} is not a token id (0 to {vocab_size - 1}, as a string)",
                           "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise APIError(f"logit_bias for token {key} must be a number from -100 to 100, got {value!r}",
                           "logit_bias")
        biases[int(key)] = float(value)
    return biases


def sampler_recipes(body: dict, limits: Limits) -> list[SamplerRecipe]:
    """The sampler chain a request asks for, in vLLM's order (gen.core.sampling.shortcut_recipes,
    which `gen run --temperature ...` shares): the penalties first (repetition_penalty, then
    presence and frequency), then either its `sampler` field (a list of `--sampler` specs, which
    replaces the rest) or temperature, top_k, top_p and min_p. Typed fields become recipes
    directly; only the `sampler` list is parsed."""
    penalties = _penalties(body)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    top_k = _integer(body, "top_k", -1, -1)
    min_p = _number(body, "min_p", 0.0, 0.0, 1.0)
    sampler = body.get("sampler")
    if sampler is not None:
        if not isinstance(sampler, list) or not all(isinstance(spec, str) for spec in sampler):
            raise APIError(f'sampler must be a list of --sampler specs like ["top_k:k=40", "temperature:t=0.8"], '
                           f"got {_json_type(sampler)}", "sampler")
        if len(sampler) > limits.max_samplers:
            raise APIError(f"sampler has {len(sampler)} specs; give at most {limits.max_samplers}", "sampler")
        return shortcut_recipes(**penalties) + [SamplerRecipe.parse(spec) for spec in sampler]
    if top_p == 0 and temperature != 0:
        raise APIError("top_p must be above 0 (0 would keep no token)", "top_p")
    return shortcut_recipes(**penalties, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)


def _penalties(body: dict) -> dict:
    """repetition_penalty (over the prompt and the text so far; 1 is none), then OpenAI's
    presence and frequency penalties (over the text generated), checked, as shortcut_recipes takes them."""
    repetition = body.get("repetition_penalty")
    if repetition is not None and (isinstance(repetition, bool) or not isinstance(repetition, (int, float))
                                   or not math.isfinite(repetition) or repetition <= 0):
        raise APIError(f"repetition_penalty must be a number above 0 (1 is none), got "
                       f"{repetition if isinstance(repetition, (int, float)) else _json_type(repetition)}",
                       "repetition_penalty")
    return {"repetition_penalty": repetition,
            "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
            "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0)}


def _constraint(body: dict, tokenizer, vocab_size: int) -> CompiledConstraint | None:
    """The constraint a request asks for (see the table above), compiled for the model's tokenizer
    here, on the request's thread; a bad pattern, schema or grammar is a 400 naming the field."""
    given = [name for name in CONSTRAINT_FIELDS if body.get(name) is not None]
    if len(given) > 1:
        raise APIError(f"give one of {', '.join(CONSTRAINT_FIELDS)}, not {' and '.join(given)}", given[1])
    if not given:
        return None
    field, value = given[0], body[given[0]]
    if field == "response_format":
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            constraint = Constraint("json_object")
        elif kind == "json_schema" and isinstance(value.get("json_schema"), dict) \
                and isinstance(value["json_schema"].get("schema"), (dict, bool)):
            constraint = Constraint("json_schema", json.dumps(value["json_schema"]["schema"]))
        else:
            raise APIError('response_format must be {"type": "text"}, {"type": "json_object"} or {"type": '
                           '"json_schema", "json_schema": {"name": ..., "schema": {...}}}', field)
    elif field == "guided_json":
        if not isinstance(value, (dict, bool, str)):
            raise APIError(f"guided_json must be a JSON Schema (an object, or its text), got {_json_type(value)}",
                           field)
        constraint = Constraint("json_schema", value if isinstance(value, str) else json.dumps(value))
    else:
        if not isinstance(value, str):
            raise APIError(f"{field} must be a string, got {_json_type(value)}", field)
        constraint = Constraint("regex" if field == "guided_regex" else "grammar", value)
    try:
        return constraint.compile(tokenizer, vocab_size)
    except GenError as error:
        raise APIError(str(error), field) from None


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
    removed_alternatives = _boolean(document, "removed_alternatives")
    if removed_alternatives and logprobs is None:
        raise APIError("removed_alternatives needs logprobs (how many alternatives to report)", "removed_alternatives")
    sampled_distribution = _boolean(document, "sampled_distribution")
    if sampled_distribution and logprobs is None:
        raise APIError("sampled_distribution needs logprobs (how many tokens to report)", "sampled_distribution")
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
    constraint = _constraint(document, tokenizer, vocab_size)
    choices = [
        Choice(ids, sampling, seed + prompt_index * n + sample, max_tokens, stop, logprobs, constraint)
        for prompt_index, ids in enumerate(prompt_ids)
        for sample in range(n)
    ]
    return CompletionRequest(prompts, [len(ids) for ids in prompt_ids], choices, sampling.specs, seed, stream,
                             include_usage, _boolean(document, "echo"), logprobs, n, prompt_ids=prompt_ids,
                             removed_alternatives=removed_alternatives, sampled_distribution=sampled_distribution)


CHAT_FIELDS = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "stop",
    "stream", "stream_options", "logprobs", "top_logprobs", "logit_bias", "presence_penalty",
    "frequency_penalty", "user", "sampler", *VLLM_SAMPLING_FIELDS, *CONSTRAINT_FIELDS,
)


def parse_chat_request(body: dict, template, tokenizer, vocab_size: int, limits: Limits) -> CompletionRequest:
    """Check a POST /v1/chat/completions body: its messages rendered by `template` (a
    gen.runtime.chat.ChatTemplate) become the prompt of a completion request checked as
    parse_completion_request checks one; the template's stop strings end every reply."""
    unknown = [name for name in body if name not in CHAT_FIELDS]
    if unknown:
        raise APIError(f"unknown field {unknown[0]!r}; the fields are {', '.join(CHAT_FIELDS)}", unknown[0])
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise APIError("give max_completion_tokens or max_tokens, not both", "max_completion_tokens")
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        raise APIError(f"logprobs must be true or false in a chat completion, got {_json_type(body['logprobs'])}; "
                       f"top_logprobs says how many alternatives", "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, 0, limits.max_logprobs)
    if top_logprobs and not body.get("logprobs"):
        raise APIError("top_logprobs needs logprobs: true", "top_logprobs")
    completion = {name: value for name, value in body.items()
                  if name not in ("messages", "max_completion_tokens", "logprobs", "top_logprobs")}
    completion["prompt"] = template.render(_messages(body))
    completion["max_tokens"] = body.get("max_completion_tokens", body.get("max_tokens"))
    completion["logprobs"] = top_logprobs if body.get("logprobs") else None
    parsed = parse_completion_request(completion, tokenizer, vocab_size, limits)
    parsed.chat = True
    for choice in parsed.choices:
        choice.stop = [*choice.stop, *template.stop]
    return parsed


def _messages(body: dict) -> list[dict]:
    """The messages as the template sees them: {"role", "content"} with the content as text
    (OpenAI's text parts joined)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(f"messages must be a non-empty list of {{\"role\", \"content\"}} objects, got "
                       f"{_json_type(messages)}{' (empty)' if messages == [] else ''}", "messages")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(f"{where} must be an object, got {_json_type(message)}", "messages")
        if message.get("role") not in ROLES:
            raise APIError(f"{where}.role must be one of {', '.join(ROLES)}, got {message.get('role')!r}", "messages")
        content = message.get("content")
        if isinstance(content, list):  # text parts: [{"type": "text", "text": "..."}]
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                raise APIError(f"{where}.content: this server takes text parts only "
                               f'({{"type": "text", "text": "..."}})', "messages")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise APIError(f"{where}.content must be text, got {_json_type(content)}", "messages")
        checked.append({"role": message["role"], "content": content})
    return checked


# --- the tokenizer routes (vLLM's shapes) ------------------------------------------------


def parse_tokenize_request(body: dict, tokenizer, limits: Limits) -> list[int]:
    """POST /tokenize: {"prompt": text, "add_special_tokens": bool} -> the prompt's ids (gen's
    tokenizers have no special tokens to add)."""
    unknown = [name for name in body if name not in ("model", "prompt", "add_special_tokens")]
    if unknown:
        raise APIError(f"unknown field {unknown[0]!r}; the fields are model, prompt, add_special_tokens", unknown[0])
    _boolean(body, "add_special_tokens")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise APIError(f"prompt must be a string, got {_json_type(prompt)}", "prompt")
    if prompt == "":
        return []
    return _prompts({"prompt": prompt}, tokenizer, limits)[1][0]


def parse_detokenize_request(body: dict, vocab_size: int) -> list[int]:
    """POST /detokenize: {"tokens": [ids]} -> the ids, checked against the vocabulary."""
    unknown = [name for name in body if name not in ("model", "tokens")]
    if unknown:
        raise APIError(f"unknown field {unknown[0]!r}; the fields are model, tokens", unknown[0])
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in tokens):
        raise APIError(f"tokens must be a list of token ids, got {_json_type(tokens)}", "tokens")
    bad = [x for x in tokens if not 0 <= x < vocab_size]
    if bad:
        raise APIError(f"tokens has token id {bad[0]}, outside the vocabulary (0 to {vocab_size - 1})", "tokens")
    return tokens


def parse_attention_request(body: dict, tokenizer, block_size: int, limits: Limits) -> tuple[list[int], int, int | None]:
    """POST /attention: {"prompt": text, "position": int} -> the ids of the prompt's window (its last
    block_size tokens), where its text starts in the prompt (characters), and the position (made
    non-negative) or None."""
    unknown = [name for name in body if name not in ("model", "prompt", "position")]
    if unknown:
        raise APIError(f"unknown field {unknown[0]!r}; the fields are model, prompt, position", unknown[0])
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or prompt == "":
        raise APIError(f"prompt must be a non-empty string, got {_json_type(prompt)}", "prompt")
    ids = _prompts({"prompt": prompt}, tokenizer, limits)[1][0]
    window = ids[-block_size:]
    position = body.get("position")
    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int) or not -len(window) <= position < len(window):
            raise APIError(f"position must be a whole number from {-len(window)} to {len(window) - 1} (the window "
                           f"holds {len(window)} tokens), got {position!r}", "position")
        position %= len(window)
    before = ids[:len(ids) - len(window)]
    return window, len(tokenizer.decode(before)) if before else 0, position


# --- the prompt's own log-probabilities (echo with logprobs) -----------------------------------


def prompt_token_choices(model, prompt_ids: list[int], top_n: int) -> list[TokenChoice]:
    """Each prompt token with its log-probability given the tokens before it, and the top_n
    likeliest there: gen.core.scoring's, in its windows of block_size (as `gen eval` scores a
    text). The first token has nothing before it: its logprob is None (null, as OpenAI's)."""
    tokenizer = model.tokenizer
    first = TokenChoice(prompt_ids[0], tokenizer.decode(prompt_ids[:1]), None, None, [])
    if len(prompt_ids) < 2:
        return [first]
    scores = token_scores(model.logits, prompt_ids, model.block_size, top_n)
    choices = [first]
    for position, token in enumerate(prompt_ids[1:]):
        alternatives = [Alternative(int(i), tokenizer.decode([int(i)]), float(logprob), float(logprob))
                        for i, logprob in zip(scores.top_ids[position], scores.top_logprobs[position])]
        logprob = float(scores.logprobs[position])
        choices.append(TokenChoice(token, tokenizer.decode([token]), logprob, logprob, alternatives))
    return choices


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


class RemovedAlternatives:
    """Why the draw could not pick each of one choice's reported alternatives (the
    `removed_alternatives` extension): "constraint" for a token the choice's constraint masked
    out, "filter" for one a filter of the sampler chain removed. Both have sampled_logprob -inf,
    so the constraint is asked: its state is followed through the choice's tokens from a fresh
    start, as its row followed it (the same tokens give the same masks)."""

    def __init__(self, constraint: CompiledConstraint | None, echoed_prompt_tokens: int = 0):
        self.constraint = constraint.start() if constraint is not None else None
        self.prompt_tokens_left = echoed_prompt_tokens  # an echoed prompt's tokens come first: scored, not drawn

    def reasons(self, token: TokenChoice) -> list[str | None]:
        """Why the draw could not pick each of `token.top` ("constraint", "filter" or None), for
        `token`, the choice's next token (an echoed prompt's tokens: None for each)."""
        if self.prompt_tokens_left:
            self.prompt_tokens_left -= 1
            return [None] * len(token.top)
        reasons: list[str | None] = []
        for alternative in token.top:
            if self.constraint is not None and not self.constraint.allowed[alternative.id]:
                reasons.append("constraint")
            elif alternative.sampled_logprob == -math.inf:
                reasons.append("filter")
            else:
                reasons.append(None)
        if self.constraint is not None:
            self.constraint.advance(token.id)
        return reasons

    @staticmethod
    def by_text(token: TokenChoice, reasons: list[str | None]) -> dict[str, str]:
        """{alternative's text: "constraint" or "filter"}: the removed_alternatives entry of `token`.
        Tokens with the same text: the likelier stands for them, as in top_logprobs."""
        removed: dict[str, str] = {}
        seen: set[str] = set()
        for alternative, reason in zip(token.top, reasons):
            if alternative.text not in seen and reason is not None:
                removed[alternative.text] = reason
            seen.add(alternative.text)
        return removed


class LogprobsWriter:
    """OpenAI's completions `logprobs` object for the tokens of one choice, with text offsets
    counted from the start of the prompt; with `removed`, also its `removed_alternatives` list,
    and with `distribution` its `sampled_distribution` list (the extensions)."""

    def __init__(self, start: int, removed: RemovedAlternatives | None = None, alternatives: bool = True,
                 distribution: bool = False):
        self.offset = start
        self.removed = removed
        self.alternatives = alternatives  # write removed_alternatives (removed may serve the distribution alone)
        self.distribution = distribution

    def write(self, tokens: list[TokenChoice]) -> dict:
        document = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token in tokens:
            document["tokens"].append(token.text)
            document["token_logprobs"].append(token.logprob)
            top: dict[str, float] = {}
            for alternative in token.top:
                top.setdefault(alternative.text, alternative.logprob)  # tokens with the same text: the likelier
            document["top_logprobs"].append(top if token.logprob is not None else None)  # a prompt's first token
            document["text_offset"].append(self.offset)
            self.offset += len(token.text)
        if self.removed is not None:
            reasons = [self.removed.reasons(token) for token in tokens]
            if self.alternatives:
                document["removed_alternatives"] = [RemovedAlternatives.by_text(token, why)
                                                    for token, why in zip(tokens, reasons)]
            if self.distribution:
                document["sampled_distribution"] = [
                    [{"token": alternative.id, "text": alternative.text,
                      "probability": math.exp(alternative.logprob),
                      "sampled_probability": math.exp(alternative.sampled_logprob), "removed": reason}
                     for alternative, reason in zip(token.top, why)]
                    for token, why in zip(tokens, reasons)]
        return document


class ChatLogprobsWriter:
    """OpenAI's chat `logprobs` object: {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}."""

    def write(self, tokens: list[TokenChoice]) -> dict:
        return {"content": [
            {**self._entry(token.text, token.logprob),
             "top_logprobs": [self._entry(alternative.text, alternative.logprob) for alternative in token.top]}
            for token in tokens
        ]}

    @staticmethod
    def _entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "replace"))}


def logprobs_writer(parsed: CompletionRequest, choice: int, echoed_prompt: bool = False):
    """The writer of choice `choice`'s logprobs: chat's shape, or the completions' with text offsets
    counted from the start of the prompt (which the first entries are, when `echoed_prompt`)."""
    if parsed.chat:
        return ChatLogprobsWriter()
    removed = None
    if parsed.removed_alternatives or parsed.sampled_distribution:
        echoed_tokens = len(parsed.choices[choice].prompt_ids) if echoed_prompt else 0
        removed = RemovedAlternatives(parsed.choices[choice].constraint, echoed_tokens)
    return LogprobsWriter(0 if echoed_prompt else len(parsed.prompt_of(choice)), removed,
                          parsed.removed_alternatives, parsed.sampled_distribution)


def dumps(document) -> str:
    """Compact JSON."""
    return json.dumps(document, separators=(",", ":"))


class StreamChunks:
    """The server-sent events of one streamed completion: `data: {completion with one choice}`
    lines, the usage, then `data: [DONE]`. The part every chunk shares is encoded once."""

    DONE = "data: [DONE]\n\n"

    def __init__(self, request_id: str, created: int, model: str, chat: bool = False):
        shared = dumps(completion_object(request_id, created, model, [], chat=chat, chunk=True))
        self.head = "data: " + shared[:shared.rindex('"choices"')]
        self.chat = chat
        self.started: set[int] = set()  # chat: the choices whose first chunk (with the role) went out

    def choice(self, index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> str:
        if self.chat:
            delta = {"content": text} if text or index not in self.started else {}
            if index not in self.started:
                self.started.add(index)
                delta = {"role": "assistant", **delta}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = choice_object(index, text, logprobs, finish_reason)
        return f'{self.head}"choices":[{dumps(choice)}]}}\n\n'

    def usage(self, usage: dict) -> str:
        return f'{self.head}"choices":[],"usage":{dumps(usage)}}}\n\n'

    @staticmethod
    def error(error: "APIError") -> str:
        return f"data: {dumps(error.to_json())}\n\n"


def completion_object(request_id: str, created: int, model: str, choices: list[dict], chat: bool = False,
                      chunk: bool = False, **extra) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": request_id, "object": kind, "created": created, "model": model, "choices": choices, **extra}


def choice_object(index: int, text: str, logprobs: dict | None, finish_reason: str | None,
                  chat: bool = False) -> dict:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish_reason}
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
