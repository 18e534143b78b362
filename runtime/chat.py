"""Chat messages -> a prompt, through a chat template (POST /v1/chat/completions; no torch).

A template is Jinja, as in Hugging Face tokenizers' `chat_template`: it sees `messages` (a list of
{"role", "content"}), `add_generation_prompt` (true: end with what opens the assistant's turn),
`bos_token` and `eos_token` ("": gen's tokenizers have none) and `raise_exception(message)`. It
runs in Jinja's immutable sandbox, so a template carried by a model file formats text and nothing
else: it reaches no attribute of Python's internals (`__class__`, `__globals__`), no file, no
import, and changes none of the objects it is given; trying is a ChatTemplateError.

An export may carry one (`gen export --chat-template FILE`, the `gen.chat_template` metadata;
gen.runtime.artifact). Models trained on raw text carry none and get DEFAULT_TEMPLATE, a
play-script layout that a model trained on Tiny Shakespeare continues naturally:

    SYSTEM:                     (only when a system message is given)
    You are terse.

    USER:
    Who art thou?

    ASSISTANT:

with DEFAULT_STOP ending the reply at its first blank line, where such a model starts the
next speaker's turn.
"""
from __future__ import annotations

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from gen.core.errors import GenError

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | upper }}:\n{{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)
# Where a reply ends under the default template (besides the request's own stop strings): a
# blank line, which in a play script ends the speech (and precedes "USER:" in the layout above).
DEFAULT_STOP = ("\n\n",)
ROLES = ("system", "user", "assistant")
MAX_TEMPLATE_CHARS = 100_000
# A conversation the export renders to check a template before writing it into the file.
SAMPLE_CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello."},
                       {"role": "assistant", "content": "Hail."}, {"role": "user", "content": "Who art thou?"}]


class ChatTemplateError(GenError):
    """A template that is not valid Jinja, or that failed (or was refused by the sandbox) on
    the messages it was given."""


def _raise_exception(message: str):
    raise TemplateError(message)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, refusing an unsafe attribute where it is read: Jinja's own
    answer is an undefined value that prints as "" and fails only when used further."""

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


class ChatTemplate:
    """A compiled chat template (DEFAULT_TEMPLATE when `source` is None); `render(messages)`
    gives the prompt text."""

    def __init__(self, source: str | None = None):
        self.source = DEFAULT_TEMPLATE if source is None else source
        self.is_default = source is None
        if len(self.source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"the chat template is {len(self.source):,} characters; the limit is "
                                    f"{MAX_TEMPLATE_CHARS:,}")
        # Hugging Face's settings: a block tag's own line break and indentation are not output.
        environment = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        environment.globals["raise_exception"] = _raise_exception
        try:
            self.template = environment.from_string(self.source)
        except TemplateError as error:
            line = f" (line {error.lineno})" if getattr(error, "lineno", None) else ""
            raise ChatTemplateError(f"the chat template is not valid Jinja{line}: {error.message}") from None

    @property
    def stop(self) -> tuple[str, ...]:
        """The stop strings every reply gets: DEFAULT_STOP under the default template, none under a model's own."""
        return DEFAULT_STOP if self.is_default else ()

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token="", eos_token="")
        except TemplateError as error:  # the sandbox's SecurityError too
            raise ChatTemplateError(f"the chat template failed on these messages: {error}") from None
        except RecursionError:
            raise ChatTemplateError("the chat template failed on these messages: it recursed too deeply") from None


def check_template(source: str) -> None:
    """Refuse a template that does not compile or fails on SAMPLE_CONVERSATION (what `gen export
    --chat-template` checks before writing it into a file)."""
    ChatTemplate(source).render(SAMPLE_CONVERSATION)
