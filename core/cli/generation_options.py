"""The options `gen sample` (torch) and `gen run` (onnxruntime) share, and what they build.

One decorator adds the options to both commands, and `echo_from_options` turns them
into the sampler recipe and the printing mode, so the two commands cannot drift
apart: the same checkpoint, export, options and seed print the same text.
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Sequence

import click

from gen.core.colours import PROBABILITY_COLOURS, probability_colour
from gen.core.errors import GenError

if TYPE_CHECKING:  # numpy and the generation loop load when a command runs, not at gen's start-up
    import numpy as np

    from gen.core.generation import Backend
    from gen.core.sampling import Sampling
    from gen.core.tokenizer import Tokenizer

OPTIONS = [
    click.option("--prompt", default="\n", show_default="a newline", help="Text to continue."),
    click.option("--sampler", "samplers", multiple=True, metavar="SPEC",
                 help="NAME[:KEY=VALUE,...], e.g. top_p:p=0.9; repeat to chain filters (default: multinomial)."),
    click.option("--logit-bias", "logit_biases", multiple=True, metavar="TEXT=BIAS",
                 help="Add BIAS to the logit of the token TEXT (one token); BIAS -inf or 'ban' forbids it. Repeatable."),
    click.option("--max-new-tokens", type=click.IntRange(min=0), default=500, show_default=True),
    click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True),
    click.option("--seed", type=click.IntRange(min=0), default=None,
                 help="Seed of the one random stream of the whole run (a whole number >= 0)."),
    click.option("--stop", multiple=True, metavar="TEXT", help="End a sample at this text (repeatable)."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print one JSON object per token: id, text, log-probabilities (see --logprobs)."),
    click.option("--logprobs", type=click.IntRange(min=0), default=None, metavar="N",
                 help="With --json: also the N most likely alternatives of each token."),
    click.option("--show-probs", is_flag=True,
                 help="Colour each token by its probability under the model (plain text when not a terminal)."),
    click.option("--regex", metavar="PATTERN", default=None,
                 help="Keep the text to a regular expression (needs gen[structured]; see docs/constraints.md)."),
    click.option("--json-schema", "json_schema", metavar="FILE", default=None,
                 type=click.Path(exists=True, dir_okay=False),
                 help="Keep the text to a JSON value that validates against the JSON Schema in FILE."),
    click.option("--json-object", "json_object", is_flag=True, help="Keep the text to one JSON object."),
    click.option("--grammar", metavar="FILE", default=None, type=click.Path(exists=True, dir_okay=False),
                 help="Keep the text to a Lark (or GBNF) grammar read from FILE."),
]


def generation_options(command):
    """Add the shared generation options to a click command function."""
    for option in reversed(OPTIONS):
        command = option(command)
    return command


def parse_logit_biases(items, tokenizer) -> dict[int, float]:
    """`--logit-bias TEXT=BIAS` items as {token id: bias}; TEXT must be exactly one token."""
    biases = {}
    for item in items:
        text, equals, value = item.rpartition("=")
        if not equals or text == "":
            raise GenError(f"--logit-bias {item!r} is not TEXT=BIAS; e.g. --logit-bias 'the=-2' or --logit-bias 'e=ban'")
        try:
            ids = tokenizer.encode(text)
        except GenError as error:
            raise GenError(f"--logit-bias {item!r}: cannot encode {text!r}: {error}") from None
        if len(ids) != 1:
            raise GenError(f"--logit-bias {item!r}: {text!r} is {len(ids)} tokens for this model's tokenizer; "
                           f"it must be exactly one")
        try:
            bias = -math.inf if value.strip().lower() == "ban" else float(value)
        except ValueError:
            raise GenError(f"--logit-bias {item!r}: {value!r} is not a number, -inf or ban") from None
        if math.isnan(bias) or bias == math.inf:
            raise GenError(f"--logit-bias {item!r}: the bias must be a number, -inf or ban")
        biases[ids[0]] = bias
    return biases


def constraint_from_options(regex, json_schema, json_object, grammar):
    """The gen.core.constraints.Constraint that --regex, --json-schema, --json-object or --grammar
    asks for (at most one of them), or None."""
    from gen.core.constraints import Constraint

    given = [(kind, value) for kind, value in (("regex", regex), ("json_schema", json_schema),
                                               ("json_object", json_object or None), ("grammar", grammar))
             if value is not None]
    if len(given) > 1:
        raise GenError("give one of --regex, --json-schema, --json-object and --grammar")
    if not given:
        return None
    kind, value = given[0]
    if kind == "json_object":
        return Constraint(kind)
    if kind == "regex":
        return Constraint(kind, value)
    from gen.core.reading import SIZE_LIMITS, read_text

    return Constraint(kind, read_text(value, f"{kind.replace('_', ' ')} file", SIZE_LIMITS["constraint"]))


def echo_from_options(backend, tokenizer, *, prompt, samplers, logit_biases, max_new_tokens, num_samples,
                      seed, stop, as_json, logprobs, show_probs, regex, json_schema, json_object, grammar) -> None:
    """Build the sampler recipe and the constraint from the options and print the samples
    (gen.core.generation)."""
    import numpy as np

    from gen.core.sampling import Sampling

    if as_json and show_probs:
        raise GenError("--json and --show-probs are two ways to print; give one of them")
    if logprobs is not None and not as_json:
        raise GenError("--logprobs N adds alternatives to the --json output; give --json too")
    sampling = Sampling(list(samplers), parse_logit_biases(logit_biases, tokenizer))
    constraint = constraint_from_options(regex, json_schema, json_object, grammar)
    compiled = constraint.compile(tokenizer, backend.vocab_size) if constraint is not None else None
    output = "json" if as_json else "probs" if show_probs else "text"
    echo_samples(backend, tokenizer, prompt, sampling, np.random.default_rng(seed), max_new_tokens,
                 num_samples, stop, output=output, logprobs=logprobs or 0, constraint=compiled)


SAMPLE_SEPARATOR = "-" * 15  # the line between samples on the terminal


def echo_samples(
    backend: Backend,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: Sampling,
    rng: np.random.Generator,
    max_new_tokens: int,
    num_samples: int,
    stop: Sequence[str] = (),
    output: str = "text",
    logprobs: int = 0,
    constraint=None,
) -> None:
    """Stream `num_samples` continuations of `prompt` to the terminal, one after another.

    `gen sample` (torch) and `gen run` (onnxruntime) both print through this, with one
    random stream for the whole run, so the same seed prints the same text on both.
    Each sample gets a fresh sampler chain from `sampling`, and a fresh state of `constraint`
    (a gen.core.constraints.CompiledConstraint) when there is one. `output` is "text", "json"
    (one JSON object per token, with `logprobs` alternatives) or "probs" (the text,
    each token coloured by its probability under the model; plain on a non-terminal).
    """
    from gen.core.generation import encode_prompt, generate_text

    prompt_ids = encode_prompt(tokenizer, prompt)  # once: a prompt it cannot encode fails before any output
    report = None if output == "text" else logprobs
    if output == "probs":
        legend = " ".join(click.style(f">={lowest:.0%}", fg=colour) for lowest, colour in reversed(PROBABILITY_COLOURS))
        click.echo(f"token probability under the model: {legend}", err=True)
    try:
        for sample in range(num_samples):
            if output != "json":
                click.echo(prompt, nl=False)
            chain = sampling.new()
            for step in generate_text(backend, tokenizer, [prompt_ids], chain, rng, max_new_tokens, stop, report,
                                      constraint):
                token = step.tokens[0] if step.tokens else None
                if output == "json":
                    if token is not None:
                        click.echo(json.dumps({"sample": sample, **token.to_json()}))
                elif output == "probs" and token is not None:
                    click.echo(click.style(step.pieces[0], fg=probability_colour(math.exp(token.logprob))), nl=False)
                else:
                    click.echo(step.pieces[0], nl=False)
            if output != "json":
                click.echo()
                click.echo(SAMPLE_SEPARATOR)
    except KeyboardInterrupt:  # Ctrl-C ends the stream, not with a traceback
        click.echo()
        raise SystemExit(130) from None
