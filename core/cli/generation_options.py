"""The options `gen sample` (torch) and `gen run` (onnxruntime) share, and what they build.

One decorator adds the options to both commands, and `echo_from_options` turns them
into the sampler recipe and the printing mode, so the two commands cannot drift
apart: the same checkpoint, export, options and seed print the same text.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import TYPE_CHECKING, Sequence

import click

from gen.core.cli.completion import complete_plugin_spec
from gen.core.colours import PROBABILITY_COLOURS, probability_colour
from gen.core.errors import GenError

if TYPE_CHECKING:  # numpy and the generation loop load when a command runs, not at gen's start-up
    import numpy as np

    from gen.core.generation import Backend
    from gen.core.sampling import Sampling
    from gen.core.tokenizer import Tokenizer

# The sampling knobs of llama.cpp, vLLM and Hugging Face, each a shortcut for one --sampler spec:
# (flag, click type, sampler spec it stands for, what it does).
SHORTCUTS = [
    ("--temperature", click.FloatRange(min=0), "temperature:t=T", "Divide the logits by T (0: greedy)."),
    ("--top-k", click.IntRange(min=0), "top_k:k=K", "Keep the K most likely tokens (0: all)."),
    ("--top-p", click.FloatRange(0, 1, min_open=True), "top_p:p=P",
     "Keep the most likely tokens that hold probability P (1: all)."),
    ("--min-p", click.FloatRange(0, 1), "min_p:p=P",
     "Keep the tokens at least P times as likely as the most likely one (0: all)."),
    ("--repetition-penalty", click.FloatRange(min=0, min_open=True), "repetition_penalty:penalty=X",
     "Make the tokens of the prompt and the text so far less likely (1: none)."),
]
SHORTCUT_FLAGS = ", ".join(flag for flag, *_ in SHORTCUTS)

OPTIONS = [
    click.option("-p", "--prompt", default=None, show_default="a newline",
                 help="Text to continue; - reads it from standard input."),
    click.option("--prompt-file", type=click.File("r", encoding="utf-8"), default=None, metavar="FILE",
                 help="Read the text to continue from FILE, as it is (- : standard input)."),
    click.option("--sampler", "samplers", multiple=True, metavar="SPEC", shell_complete=complete_plugin_spec("sampler"),
                 help="NAME[:KEY=VALUE,...], e.g. top_p:p=0.9; repeat to chain filters (default: multinomial). "
                      f"Or the shortcuts {SHORTCUT_FLAGS}, which build the same chain in that order "
                      "(vLLM's, as gen serve's fields do) whatever order they are typed in; not both."),
    *[click.option(flag, type=kind, default=None, metavar=spec.rpartition("=")[2],
                   help=f"{text} Shortcut for --sampler {spec}.")
      for flag, kind, spec, text in SHORTCUTS],
    click.option("--logit-bias", "logit_biases", multiple=True, metavar="TEXT=BIAS",
                 help="Add BIAS to the logit of the token TEXT (one token); BIAS -inf or 'ban' forbids it. Repeatable."),
    click.option("--max-new-tokens", type=click.IntRange(min=0), default=500, show_default=True),
    click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True),
    click.option("--seed", type=click.IntRange(min=0), default=None,
                 help="Seed of the one random stream of the whole run (a whole number >= 0)."),
    click.option("--stop", multiple=True, metavar="TEXT", help="End a sample at this text (repeatable)."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print one JSON object per token: id, text, log-probabilities (see --logprobs); after "
                      "each sample one more with its finish_reason and usage."),
    click.option("--logprobs", type=click.IntRange(min=0), default=None, metavar="N",
                 help="With --json: also the N most likely alternatives of each token."),
    click.option("--show-probs", is_flag=True,
                 help="Colour each token by its probability under the model (plain text when not a terminal)."),
    click.option("--stats/--no-stats", default=None,
                 help="At the end, print tokens, seconds and tokens/s to standard error (default: when it is a "
                      "terminal)."),
    click.option("--regex", metavar="PATTERN", default=None,
                 help="Keep the text to a regular expression (needs gen[structured]; see docs/constraints.md)."),
    click.option("--json-schema", "json_schema", metavar="FILE", default=None,
                 type=click.Path(exists=True, dir_okay=False),
                 help="Keep the text to a JSON value that validates against the JSON Schema in FILE."),
    click.option("--json-object", "json_object", is_flag=True, help="Keep the text to one JSON object."),
    click.option("--grammar", metavar="FILE", default=None, type=click.Path(exists=True, dir_okay=False),
                 help="Keep the text to a Lark (or GBNF) grammar read from FILE."),
]


class GenerationCommand(click.Command):
    """`gen run` and `gen sample`: an unknown option that names a sampler without a shortcut
    (--mirostat-tau, --no-repeat-ngram) is told how to ask for it (--sampler); a misspelt
    shortcut (--temperatur) gets click's own "Did you mean '--temperature'?"."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as error:
            hint = None if error.possibilities else _sampler_hint(error.option_name)
            if hint:
                error.message = f"{error.message.rstrip('.')}: {hint}"
            raise


def _sampler_hint(option_name: str) -> str | None:
    """What to type instead of `option_name` when it names a registered sampler, else None."""
    from gen.core.registry import get_registry

    typed = option_name.lstrip("-").replace("-", "_")
    for name in get_registry().names("sampler"):
        if len(typed) >= 3 and (typed.startswith(name) or name.startswith(typed)):
            return (f"samplers without a shortcut ({SHORTCUT_FLAGS}) take --sampler NAME:KEY=VALUE, "
                    f"e.g. --sampler {name} (gen plugins lists their options)")
    return None


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


def prompt_from_options(prompt: str | None, prompt_file) -> str:
    """The prompt: --prompt TEXT (- reads standard input), --prompt-file FILE, or a newline."""
    if prompt is not None and prompt_file is not None:
        raise GenError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        return prompt_file.read()
    if prompt == "-":
        return sys.stdin.read()
    return "\n" if prompt is None else prompt


def sampler_recipes_from_options(samplers: Sequence[str], shortcuts: dict) -> list:
    """The --sampler specs, or the chain the shortcut flags build (gen.core.sampling.shortcut_recipes,
    in vLLM's order, as gen serve builds it from the same fields)."""
    from gen.core.sampling import shortcut_recipes

    given = {name: value for name, value in shortcuts.items() if value is not None}
    if not given:
        return list(samplers)
    if samplers:
        flags = " ".join(f"--{name.replace('_', '-')}" for name in given)
        raise GenError(f"give --sampler specs or the shortcuts ({flags}), not both; e.g. --sampler "
                       f"temperature:t=0.8 --sampler top_k:k=40 or --temperature 0.8 --top-k 40")
    return shortcut_recipes(**given)


def echo_from_options(backend, tokenizer, *, prompt, prompt_file, samplers, temperature, top_k, top_p, min_p,
                      repetition_penalty, logit_biases, max_new_tokens, num_samples, seed, stop, as_json, logprobs,
                      show_probs, stats, regex, json_schema, json_object, grammar) -> None:
    """Build the sampler recipe and the constraint from the options and print the samples
    (gen.core.generation), then, with --stats (or on a terminal), the speed."""
    import numpy as np

    from gen.core.sampling import Sampling

    if as_json and show_probs:
        raise GenError("--json and --show-probs are two ways to print; give one of them")
    if logprobs is not None and not as_json:
        raise GenError("--logprobs N adds alternatives to the --json output; give --json too")
    prompt = prompt_from_options(prompt, prompt_file)
    recipes = sampler_recipes_from_options(samplers, dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty))
    sampling = Sampling(recipes, parse_logit_biases(logit_biases, tokenizer))
    constraint = constraint_from_options(regex, json_schema, json_object, grammar)
    compiled = constraint.compile(tokenizer, backend.vocab_size) if constraint is not None else None
    output = "json" if as_json else "probs" if show_probs else "text"
    started = time.perf_counter()
    tokens = echo_samples(backend, tokenizer, prompt, sampling, np.random.default_rng(seed), max_new_tokens,
                          num_samples, stop, output=output, logprobs=logprobs or 0, constraint=compiled)
    if stats if stats is not None else _is_terminal(sys.stderr):
        click.echo(speed_summary(tokens, time.perf_counter() - started), err=True)


def _is_terminal(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def speed_summary(tokens: int, seconds: float) -> str:
    """The line after a run: 'gen: 200 tokens in 1.31 s, 152.7 tokens/s'."""
    rate = tokens / seconds if seconds > 0 else 0.0
    return f"gen: {tokens:,} tokens in {seconds:.2f} s, {rate:,.1f} tokens/s"


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
) -> int:
    """Stream `num_samples` continuations of `prompt` to the terminal, one after another, and
    return how many tokens they drew in all.

    `gen sample` (torch) and `gen run` (onnxruntime) both print through this, with one
    random stream for the whole run, so the same seed prints the same text on both.
    Each sample gets a fresh sampler chain from `sampling`, and a fresh state of `constraint`
    (a gen.core.constraints.CompiledConstraint) when there is one. `output` is "text", "json"
    (one JSON object per token, with `logprobs` alternatives) or "probs" (the text,
    each token coloured by its probability under the model; plain on a non-terminal). In "json",
    each sample ends with one more object: its finish_reason ("stop" or "length") and usage
    (prompt, completion and total tokens, as OpenAI's API reports them).
    """
    from gen.core.generation import encode_prompt, generate_text

    prompt_ids = encode_prompt(tokenizer, prompt)  # once: a prompt it cannot encode fails before any output
    report = None if output == "text" else logprobs
    if output == "probs":
        legend = " ".join(click.style(f">={lowest:.0%}", fg=colour) for lowest, colour in reversed(PROBABILITY_COLOURS))
        click.echo(f"token probability under the model: {legend}", err=True)
    drawn = 0
    stdout = sys.stdout  # read now: click's test runner swaps it for each invocation
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
                elif step.pieces[0]:  # plain text: a write and a flush cost a tenth of click.echo's per token
                    stdout.write(step.pieces[0])
                    stdout.flush()
            count = step.counts[0]
            drawn += count
            if output == "json":
                usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": count,
                         "total_tokens": len(prompt_ids) + count}
                # A row ends early only by "stop"; one that never started (--max-new-tokens 0) is at its length.
                click.echo(json.dumps({"sample": sample, "finish_reason": step.finish_reasons[0] or "length",
                                       "usage": usage}))
            else:
                click.echo()
                click.echo(SAMPLE_SEPARATOR)
    except KeyboardInterrupt:  # Ctrl-C ends the stream, not with a traceback
        click.echo()
        raise SystemExit(130) from None
    return drawn
