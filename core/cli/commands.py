"""The built-in commands `gen train`, `gen prepare` and `gen sample`.

Each imports its heavy machinery (torch, the training loop) inside the function, so
that `gen --help` and `gen run` never import torch. A `GenError` raised here becomes
a one-line `Error: ...` in the `gen` group (gen.core.cli). The commands reach `gen`
through the `register_commands` hook, as a third-party plugin's would.
"""
from __future__ import annotations

import click
from click.core import ParameterSource

from gen.core.errors import GenError
from gen.core.cli.completion import complete_plugin_spec
from gen.core.cli.generation_options import GenerationCommand, echo_from_options, generation_options
from gen.core.hookspecs import hookimpl
from gen.core.reading import load_toml
from gen.core.specs import format_spec, options_of
from gen.core.training.config import DTYPES, LIMITS, TrainConfig, option_flag
from gen.core.shards import SHARD_TOKENS


# --- gen train ------------------------------------------------------------------------


# (option, help); the defaults come from TrainConfig, the numeric ranges from LIMITS.
TRAIN_OPTIONS = [
    ("data", "A UTF-8 text file, 'shakespeare' (Tiny Shakespeare, downloaded once), or a folder of token "
             "shards: gen prepare's, or nanoGPT's train.bin/val.bin (with meta.pkl)."),
    ("tokenizer", "Tokenizer plugin and options, trained on the corpus: char, byte, bpe:vocab_size=512, ... "
                  "(a token folder brings its own)."),
    ("verify", "Before training, read every shard of a token folder against the sha256 gen prepare recorded "
               "(sizes are always checked; this reads the whole corpus)."),
    ("init-from", "Fine-tune: start from this checkpoint's (or run directory's) weights, model and tokenizer, "
                  "with a fresh optimizer, step count and schedule; options that change the model's shape "
                  "are refused (see examples/finetune.toml)."),
    ("model", "Model plugin and options: gpt, gpt:n_layer=6,n_embd=384, bigram, ... (options listed below)."),
    ("block-size", "Context length in tokens (the model's option of that name; default: the model's)."),
    ("n-layer", "Transformer blocks (the model's option of that name, e.g. gpt's)."),
    ("n-head", "Attention heads per block (the model's option of that name, e.g. gpt's)."),
    ("n-embd", "Embedding width (the model's option of that name; gpt's must divide by --n-head)."),
    ("dropout", "Dropout probability (the model's option of that name, e.g. gpt's)."),
    ("bias/--no-bias", "Biases in Linear layers and LayerNorms (the model's option of that name, e.g. gpt's)."),
    ("max-iters", "Optimizer steps to train for (in all, counting resumed ones)."),
    ("batch-size", "Sequences per micro-batch."),
    ("grad-accum", "Micro-batches accumulated per optimizer step."),
    ("lr", "Peak learning rate (a model may set its own default, listed at the end)."),
    ("min-lr", "Learning rate at the end of the cosine decay."),
    ("warmup-iters", "Steps of linear warmup."),
    ("lr-decay-iters", "Step where the cosine decay reaches --min-lr (default: --max-iters)."),
    ("weight-decay", "AdamW weight decay, applied to matrices only."),
    ("beta1", "AdamW beta1."),
    ("beta2", "AdamW beta2."),
    ("grad-clip", "Clip the gradient norm to this (0: off)."),
    ("eval-interval", "Evaluate and checkpoint every this many steps."),
    ("eval-iters", "Batches per split in each evaluation."),
    ("log-interval", "Every this many steps, add the mean training loss and tokens/s to metrics.jsonl, and print "
                     "them when the output is not a terminal (a terminal's progress bar shows them)."),
    ("out", "Run directory: latest/ and best/ checkpoints and metrics.jsonl."),
    ("resume", "Continue the run in --out from its latest checkpoint."),
    ("overwrite", "Start over even if --out holds a run (replaced at the first checkpoint)."),
    ("device", "cpu, cuda, cuda:N or auto (cuda when there is one)."),
    ("dtype", "Autocast precision (auto: bfloat16 if native)."),
    ("compile/--no-compile", "torch.compile the model (~30 s on 2 CPU cores; then faster steps)."),
    ("seed", "Seed of the initial weights and the batch order."),
]
FLAGS = ("resume", "overwrite", "verify")
PLUGIN_OPTIONS = ("tokenizer", "model")  # their values are plugin specs, completed from the registry
GIVEN_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
OPTION_TYPES = {name: option.type for name, option in options_of(TrainConfig).items()}


def _option_name(declaration: str) -> str:
    return declaration.split("/")[0].replace("-", "_")


def _click_type(name: str):
    """The click type of a training option: its type, and its range from LIMITS."""
    if name == "dtype":
        return click.Choice(DTYPES)
    if name in LIMITS:
        lowest, highest = LIMITS[name]
        return (click.IntRange if OPTION_TYPES[name] is int else click.FloatRange)(lowest, highest)
    return OPTION_TYPES[name]  # model shortcuts are checked by the model itself


def _train_option_decorators():
    decorators = []
    for declaration, help_text in TRAIN_OPTIONS:
        name = _option_name(declaration)
        default = getattr(TrainConfig, name)
        if name in FLAGS:
            decorators.append(click.option(f"--{declaration}", is_flag=True, help=help_text))
        elif "/" in declaration:  # --bias/--no-bias, --compile/--no-compile
            decorators.append(click.option(f"--{declaration}", default=default, show_default=default is not None,
                                           help=help_text))
        else:
            decorators.append(click.option(
                f"--{declaration}", type=_click_type(name), default=default, show_default=default is not None,
                help=help_text, shell_complete=complete_plugin_spec(name) if name in PLUGIN_OPTIONS else None,
            ))
    return decorators


def _options_from_file(path: str, command: click.Command, ctx: click.Context) -> dict:
    """The training options in a TOML file, checked and converted like command-line ones.

    The model may be a string (`model = "gpt:n_layer=6"`) or a table
    (`[model]` with `name = "gpt"` and the model's options as keys).
    """
    parameters = {parameter.name: parameter for parameter in command.params if parameter.name != "config"}
    values = {}
    for key, value in load_toml(path, "TOML config").items():
        name = key.replace("-", "_")
        parameter = parameters.get(name)
        if parameter is None:
            known = ", ".join(sorted(parameters))
            raise GenError(f"the config file {path!r} has an unknown option {key!r}; known options: {known}")
        if name == "model" and isinstance(value, dict):
            value = _model_table(path, value)
        if isinstance(parameter, click.Option) and (parameter.is_flag or parameter.is_bool_flag):
            if not isinstance(value, bool):
                raise GenError(f"the config file {path!r}: {key} must be true or false, got {value!r}")
        else:
            if isinstance(value, (bool, dict, list)):
                raise GenError(f"the config file {path!r}: {key} = {value!r} is not a valid value")
            if isinstance(value, float) and isinstance(parameter.type, click.types.IntParamType):
                # click would round 10.5 down to 10 without a word
                raise GenError(f"the config file {path!r}: {key} = {value!r} is not a whole number")
            try:
                value = parameter.type.convert(value, parameter, ctx)
            except click.BadParameter as error:
                raise GenError(f"the config file {path!r}: {key} = {value!r}: {error.message}") from None
        values[name] = value
    return values


def _model_table(path: str, table: dict) -> str:
    """A TOML `[model]` table as a model spec: name = "gpt", n_layer = 6 -> 'gpt:n_layer=6'."""
    options = dict(table)
    name = options.pop("name", None)
    if not isinstance(name, str) or not name:
        raise GenError(f'the config file {path!r}: the [model] table needs a name, e.g. name = "gpt"')
    for key, value in options.items():
        if isinstance(value, (dict, list)):
            raise GenError(f"the config file {path!r}: model option {key} = {value!r} is not a single value")
    return format_spec(name, options)


def _models_help() -> str:
    """Every registered model with its options and defaults, and the training defaults it
    sets in place of TrainConfig's (the bigram's --lr 0.1), for `gen train --help`."""
    from gen.core.registry import get_registry

    registry = get_registry()
    lines = []
    for name in registry.names("model"):
        entry = registry.entry("model", name)
        line = f"{name}: {entry.options_text()}"
        try:
            training_defaults = getattr(entry.load(), "training_defaults", None) or {}
        except GenError:  # options_text has said why the model is unavailable
            training_defaults = {}
        if training_defaults:
            line += "; trains by default with " + ", ".join(
                f"{option_flag(key)} {value}" for key, value in training_defaults.items())
        lines.append(line)
    return "\n".join(lines)


class TrainCommand(click.Command):
    """`gen train`, whose help ends with each model's options (listed when help is shown)."""

    def format_epilog(self, ctx, formatter):
        formatter.write_paragraph()
        formatter.write_text("Models and their options (--model NAME:KEY=VALUE,...):")
        with formatter.indentation():
            for line in _models_help().splitlines():
                formatter.write_text(line)


def _train_from_options(ctx, config, **options):
    """Train a model on a text corpus; longer recipes are in examples/*.toml.

    The run directory --out holds latest/ (what --resume continues), best/ (the lowest
    validation loss: what `gen sample` and `gen eval` load from --checkpoint out) and
    metrics.jsonl (one line per evaluation, and one per --log-interval steps of training).
    """
    # Given: on the command line or in a GEN_TRAIN_* environment variable. Those win
    # over the config file, the model's training defaults and, on --resume, the saved options.
    given = {name for name in options if ctx.get_parameter_source(name) in GIVEN_SOURCES}
    if config:
        from_file = _options_from_file(config, ctx.command, ctx)
        options.update({name: value for name, value in from_file.items() if name not in given})
        given |= set(from_file)
    plot = options.pop("plot")  # what to do after the run, not a training option
    trackers = options.pop("trackers")  # where the metrics go, not a training option either
    given -= {"plot", "trackers"}
    if plot:
        from gen.core.cli.plot import check_matplotlib, plot_run

        check_matplotlib()  # before the run, not after it

    from gen.core.training.loop import run_training

    try:
        result = run_training(TrainConfig(**options), given=given, say=click.echo, trackers=trackers)
    except KeyboardInterrupt:  # Ctrl-C: the run saved what it had and said how to resume
        raise SystemExit(130) from None
    if plot:
        click.echo(f"wrote {plot_run(result.out)}")


def _build_train_command() -> click.Command:
    function = click.pass_context(_train_from_options)
    for decorator in reversed(_train_option_decorators()):
        function = decorator(function)
    function = click.option(
        "--tracker", "trackers", multiple=True, metavar="NAME[:KEY=VALUE,...]",
        shell_complete=complete_plugin_spec("tracker"),
        help="Also send the metrics to this experiment tracker (repeatable): tensorboard (pip install "
             "'gen[tensorboard]'), or a plugin's. metrics.jsonl is always written.",
    )(function)
    function = click.option(
        "--plot", is_flag=True,
        help="At the end, draw the loss curves to OUT/loss.png (as gen plot does; needs matplotlib).",
    )(function)
    function = click.option(
        "--config", type=click.Path(dir_okay=False), default=None,
        help="A TOML file of these options (dashes or underscores); the command line and GEN_TRAIN_* variables win.",
    )(function)
    return click.command(name="train", cls=TrainCommand)(function)


train_command = _build_train_command()


# --- gen prepare ----------------------------------------------------------------------


@click.command()
@click.option("--data", required=True,
              help="A text file, a folder of text files, a glob ('corpus/*.txt'), parquet/arrow/jsonl files of "
                   "records (Hugging Face datasets), or nanoGPT's folder of train.bin/val.bin (with meta.pkl).")
@click.option("--tokenizer", default="char", show_default=True, shell_complete=complete_plugin_spec("tokenizer"),
              help="Tokenizer plugin and options; one that learns (char, bpe) learns from the first 32 MB.")
@click.option("--out", required=True, help="The folder of token shards and their index.json, for gen train --data.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes that encode the text (the chunks keep their order).")
@click.option("--text-column", default="text", show_default=True,
              help="The column of parquet/arrow/jsonl records that holds the text.")
@click.option("--shard-tokens", type=click.IntRange(1), default=SHARD_TOKENS, show_default=True,
              help="Token ids per shard file.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds a prepared folder.")
def prepare(data, tokenizer, out, workers, text_column, shard_tokens, overwrite):
    """Tokenize a corpus of any size into memory-mapped token shards for gen train --data OUT.

    The text is streamed in chunks and never held whole; the shards (uint16 ids where the
    vocabulary fits, else uint32) and an index of their sizes and sha256 sums are written
    into a temporary folder that replaces OUT once complete, so an interrupted prepare
    leaves OUT as it was (run it again to start over).
    """
    from gen.core.training.prepare import prepare as prepare_corpus

    prepare_corpus(data, tokenizer, out, workers=workers, text_column=text_column, shard_tokens=shard_tokens,
                   overwrite=overwrite, say=click.echo)


# --- gen sample -----------------------------------------------------------------------


@click.command(cls=GenerationCommand)
@click.option("--checkpoint", default="out", show_default=True,
              help="A checkpoint directory, or a run directory (its best checkpoint).")
@generation_options
@click.option("--no-cache", is_flag=True, help="Recompute the whole context at every step (no KV cache).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
def sample(checkpoint, no_cache, device, **options):
    """Stream text from a checkpoint written by `gen train`.

    Past the model's block_size the context slides: with the KV cache, once it is
    full the last block_size/2 tokens are fed again as a fresh prefill; without it,
    every step sees the last block_size tokens.
    """
    from gen.core.training.torch_backend import TorchBackend

    backend = TorchBackend.from_checkpoint(checkpoint, device=device, use_cache=not no_cache)
    echo_from_options(backend, backend.tokenizer, **options)


@hookimpl
def register_commands(cli):
    cli.add_command(train_command)
    cli.add_command(prepare)
    cli.add_command(sample)
