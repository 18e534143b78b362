"""Constraints: structured generation's contract (numpy, no torch).

A constraint keeps a generation inside a language (a regular expression, a JSON Schema, a
grammar): before the sampler chain's filters and its draw, every token that would leave the
language is masked out, so whatever the chain draws stays inside it.

    from gen.core.constraints import Constraint

    Constraint("regex", r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
    Constraint("json_schema", '{"type": "object", "properties": {...}}')
    Constraint("json_object")            # any JSON object
    Constraint("grammar", lark_text)     # a Lark (or GBNF) grammar

Kinds are plugins (`register_constraints`, like samplers); gen's own `regex`, `json_schema`,
`json_object` and `grammar` (gen.plugins.constraints, through llguidance) are registered like a
third party's. A plugin registers a class built as `cls(value, tokenizer, vocab_size)`: it
compiles `value` for this tokenizer (raising a one-line GenError for a bad pattern, schema or
grammar), and its `start()` returns the state of one generation, a `ConstraintState`:

    allowed() -> bool array (vocab_size,)   the tokens that keep the text inside the language
    complete -> bool                        whether the text so far is a whole sentence of it
    advance(token)                          take the token drawn

Ending. gen's models have no end-of-text token, so a constrained row ends ("stop"):
- as soon as its text is complete and no token may follow (a closed JSON object, a fixed
  pattern); or
- when its text is complete and the model's most likely next token (the argmax of its own
  logits) is not one the language allows there: the model would leave the language, so the row
  ends instead of being forced on (`[0-9]+` ends when the model would rather not write a digit);
- at a stop string, like any row.
At max_tokens it ends "stop" when its text is complete, else "length" (cut off, incomplete).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gen.core.errors import GenError


class ConstraintState(Protocol):
    """One generation's position in the language (see the module docstring)."""

    complete: bool

    def allowed(self) -> np.ndarray: ...

    def advance(self, token: int) -> None: ...


@dataclass(frozen=True)
class Constraint:
    """What to constrain to: a registered constraint kind and its value (the pattern, schema or
    grammar text; "" for a kind that needs none, like json_object). `compile(tokenizer,
    vocab_size)` checks it against the model's tokenizer, once per generation call."""

    kind: str
    value: str = ""

    @classmethod
    def of(cls, constraint) -> "Constraint | None":
        """From what an API caller passes: a Constraint, a (kind, value) pair, or None."""
        if constraint is None or isinstance(constraint, Constraint):
            return constraint
        if isinstance(constraint, (tuple, list)) and len(constraint) in (1, 2) and \
                all(isinstance(part, str) for part in constraint):
            return cls(*constraint)
        raise GenError(f"a constraint is a gen.core.constraints.Constraint or a (kind, value) pair like "
                       f"('regex', '[0-9]+'), got {constraint!r}")

    def compile(self, tokenizer, vocab_size: int) -> "CompiledConstraint":
        from gen.core.registry import get_registry

        entry = get_registry().entry("constraint", self.kind)
        try:
            compiled = entry.load()(self.value, tokenizer, vocab_size)
        except GenError:
            raise
        except Exception as error:  # a plugin's own failure, in one line
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            raise GenError(f"constraint {self.kind!r} (from {entry.provider}) failed to compile: {message}") from None
        return CompiledConstraint(self, compiled, vocab_size)


class CompiledConstraint:
    """A constraint compiled for one tokenizer; `start()` gives each row its own state.

    Compiling checks that the language can be entered with this tokenizer's tokens: a
    language whose first character is not in the vocabulary (JSON for a model whose characters
    hold no `{`) is refused here, before anything is generated."""

    def __init__(self, constraint: Constraint, compiled, vocab_size: int):
        self.constraint = constraint
        self.compiled = compiled
        self.vocab_size = vocab_size
        first = self.start()
        if not first.complete and not first.allowed.any():
            raise GenError(f"constraint {constraint.kind!r} cannot be met by this model's tokenizer: none of its "
                           f"tokens can start the text it asks for; use a model whose vocabulary has the characters "
                           f"it needs (e.g. the byte tokenizer)")

    def start(self) -> "RowConstraint":
        return RowConstraint(self.constraint.kind, self.compiled.start(), self.vocab_size)


class RowConstraint:
    """One row's constraint state as the generation loop uses it: the allowed tokens as a mask
    over the model's vocabulary (recomputed only after a token), and the ending rule."""

    def __init__(self, kind: str, state: ConstraintState, vocab_size: int):
        self.kind = kind
        self.state = state
        self.vocab_size = vocab_size
        self._allowed: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return bool(self.state.complete)

    @property
    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens that keep the text inside the language."""
        if self._allowed is None:
            allowed = np.asarray(self.state.allowed(), dtype=bool)
            if allowed.shape[0] < self.vocab_size:  # ids past the tokenizer's (a padded vocabulary)
                allowed = np.concatenate([allowed, np.zeros(self.vocab_size - allowed.shape[0], dtype=bool)])
            self._allowed = allowed[:self.vocab_size]
        return self._allowed

    def can_continue(self) -> bool:
        return bool(self.allowed.any())

    def ends_before(self, logits: np.ndarray) -> bool:
        """Whether the row ends here rather than drawing from its (vocab,) logits: its text is
        complete and the model's most likely next token would leave the language."""
        return self.complete and not self.allowed[int(np.argmax(logits))]

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The (vocab,) logits with every token outside the language at -inf."""
        if not self.can_continue():
            raise GenError(f"constraint {self.kind!r} reached a point that no token of this model's vocabulary can "
                           f"continue; use a model whose vocabulary has the characters it needs")
        return np.where(self.allowed, logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def advance(self, token: int) -> None:
        if not self.allowed[token]:
            raise GenError(f"token {token} was drawn outside constraint {self.kind!r}; a sampler of the chain "
                           f"picked a token the constraint had removed")
        self.state.advance(token)
        self._allowed = None
