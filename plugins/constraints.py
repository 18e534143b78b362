"""gen's own constraint kinds, through llguidance (the engine of llama.cpp's and vLLM's
structured output; Rust, no torch): `regex`, `json_schema`, `json_object` and `grammar` (Lark,
or llama.cpp's GBNF). Install with `pip install 'gen[structured]'`.

gen's tokenizers are mapped onto llguidance's token view, the bytes of each token id: the char
tokenizer's characters, the byte tokenizer's bytes, the BPE tokenizer's merged bytes, and a
Hugging Face tokenizer.json through llguidance's own reader. gen's models have no end-of-text
token, so llguidance is given one id past the vocabulary (which the model never draws) and gen
asks it only whether the text is complete (gen.core.constraints says how a row ends).

JSON is written compactly (no whitespace: `,` and `:` as separators), which
suits small models and lets a model whose vocabulary lacks `{` be refused before generating.
Compile work is bounded by llguidance's limits (its defaults, e.g. 250,000 lexer states and
500,000 grammar symbols): a schema or grammar past them is refused with llguidance's message.
"""
from __future__ import annotations

import json
import re
import weakref

import numpy as np

from gen.core.errors import GenError
from gen.core.hookspecs import hookimpl

# Each accepted row computes a mask with the engine's default per-step limits; building the
# grammar is bounded by these (llguidance's own defaults, named here so that they are visible).
MAX_GRAMMAR_SIZE = 500_000
MAX_LEXER_STATES = 250_000
JSON_OPTIONS = {"whitespace_flexible": False}


@hookimpl
def register_constraints(register):
    register("regex", Regex)
    register("json_schema", JsonSchema)
    register("json_object", JsonObject)
    register("grammar", Grammar)


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GenError("structured generation needs llguidance; install it: pip install 'gen[structured]'") from None
    return llguidance


# --- gen's tokenizers as llguidance sees them ---------------------------------------------


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id of a gen tokenizer stands for (its text alone, for a tokenizer gen does
    not know: right for any whose tokens are whole characters)."""
    if hasattr(tokenizer, "characters"):  # char
        return [character.encode("utf-8") for character in tokenizer.characters]
    if hasattr(tokenizer, "merges"):  # BPE: ids 0-255 are the bytes, then each merge joins two
        pieces = [bytes([value]) for value in range(256)]
        for first, second in tokenizer.merges:
            pieces.append(pieces[first] + pieces[second])
        return pieces
    if type(tokenizer).__name__ == "ByteTokenizer":
        return [bytes([value]) for value in range(256)]
    return [tokenizer.decode([token]).encode("utf-8") for token in range(tokenizer.vocab_size)]


class _TokenView:
    """What llguidance's TokenizerWrapper reads: the tokens' bytes, an end-of-text id (one past
    the vocabulary) and an encoder."""

    def __init__(self, tokenizer):
        self.tokens = token_bytes(tokenizer) + [b""]
        self.eos_token_id = len(self.tokens) - 1
        self.bos_token_id = None
        self.special_token_ids = [self.eos_token_id]
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        try:
            return self._tokenizer.encode(text)
        except GenError:
            return []


_engine_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def engine_tokenizer(tokenizer):
    """llguidance's LLTokenizer for a gen tokenizer, built once per tokenizer object (a 50,257-token
    vocabulary takes a while)."""
    cached = _engine_tokenizers.get(tokenizer)
    if cached is None:
        llguidance = _llguidance()
        document = getattr(tokenizer, "document", None)
        if isinstance(document, dict):  # hf: llguidance reads the tokenizer.json itself
            cached = llguidance.LLTokenizer(json.dumps(document), n_vocab=tokenizer.vocab_size + 1,
                                            eos_token=tokenizer.vocab_size)
        else:
            view = _TokenView(tokenizer)
            cached = llguidance.LLTokenizer(llguidance.TokenizerWrapper(view), n_vocab=len(view.tokens),
                                            eos_token=view.eos_token_id)
        _engine_tokenizers[tokenizer] = cached
    return cached


# --- the kinds ------------------------------------------------------------------------------


class EngineConstraint:
    """A language compiled by llguidance for one tokenizer; `start()` is a fresh matcher."""

    what = "constraint"

    def __init__(self, value: str, tokenizer, vocab_size: int):
        llguidance = _llguidance()
        self.tokenizer = engine_tokenizer(tokenizer)
        self.grammar = self.engine_grammar(llguidance, value)
        self.limits = llguidance.LLParserLimits(max_grammar_size=MAX_GRAMMAR_SIZE, max_lexer_states=MAX_LEXER_STATES)
        error = llguidance.LLMatcher.validate_grammar(self.grammar, self.tokenizer, limits=self.limits)
        if error:
            raise GenError(f"invalid {self.what}: {_one_line(error)}")
        self._llguidance = llguidance

    def engine_grammar(self, llguidance, value: str) -> str:
        raise NotImplementedError

    def start(self) -> "EngineState":
        matcher = self._llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0, limits=self.limits)
        return EngineState(matcher, self.what)


def _one_line(message: str) -> str:
    """llguidance's message on one line, its position as "line L, column C" (it draws the position
    with an excerpt of the grammar and a caret instead: lines dropped here)."""
    lines = [line.strip() for line in message.strip().splitlines()]
    first = re.sub(r"^(?:at )?(\d+)\((\d+)\):", r"at line \1, column \2:", lines[0])
    if "regex parse error:" in message:  # the pattern, a caret under the position, then the problem
        pattern_line, caret_line = message.split("regex parse error:")[1].lstrip("\n").splitlines()[:2]
        column = caret_line.index("^") - (len(pattern_line) - len(pattern_line.lstrip())) + 1
        problem = next((line for line in lines if line.startswith("error:")), "error").removeprefix("error:")
        return f"at column {column} of the pattern:{problem}"
    return first


class Regex(EngineConstraint):
    """Text that matches a regular expression as a whole (Rust regex syntax)."""

    what = "regular expression"

    def engine_grammar(self, llguidance, value: str) -> str:
        if not value:
            raise GenError("the regex constraint needs a pattern, e.g. --regex '[0-9]+'")
        return llguidance.LLMatcher.grammar_from_regex(value)


class JsonSchema(EngineConstraint):
    """A JSON value that validates against a JSON Schema."""

    what = "JSON Schema"

    def engine_grammar(self, llguidance, value: str) -> str:
        try:
            schema = json.loads(value)
        except json.JSONDecodeError as error:
            raise GenError(f"the JSON Schema is not JSON: {error}") from None
        if not isinstance(schema, (dict, bool)):
            raise GenError(f"a JSON Schema is an object (or true/false), got {type(schema).__name__}")
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
        except ValueError as error:
            raise GenError(f"invalid JSON Schema: {_one_line(str(error))}") from None


class JsonObject(JsonSchema):
    """Any JSON object (OpenAI's response_format json_object)."""

    what = "JSON object constraint"

    def engine_grammar(self, llguidance, value: str) -> str:
        if value:
            raise GenError("json_object takes no value; to give a schema use json_schema")
        return super().engine_grammar(llguidance, '{"type": "object"}')


class Grammar(EngineConstraint):
    """Text that parses with a Lark grammar (llguidance's dialect) or a llama.cpp GBNF grammar."""

    what = "grammar"

    def engine_grammar(self, llguidance, value: str) -> str:
        if not value.strip():
            raise GenError("the grammar constraint needs a grammar (Lark, or GBNF with a `root ::=` rule)")
        try:
            return llguidance.grammar_from("grammar", value)
        except ValueError as error:
            raise GenError(f"invalid grammar: {_one_line(str(error))}") from None


class EngineState:
    """One row's llguidance matcher."""

    def __init__(self, matcher, what: str):
        self.matcher = matcher
        self.what = what

    @property
    def complete(self) -> bool:
        return self.matcher.is_accepting()

    def allowed(self) -> np.ndarray:
        # The last id is the end-of-text llguidance was given, which gen's models never draw.
        allowed = (np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8) != 0)[:-1]
        if allowed.any():  # (llguidance calls a dead end an error; gen.core.constraints words it)
            self._check()
        return allowed

    def advance(self, token: int) -> None:
        self.matcher.consume_token(int(token))
        self._check()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise GenError(f"the {self.what} failed while generating: {_one_line(self.matcher.get_error())}")
