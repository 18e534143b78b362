"""The built-in commands besides `plugins`: train, sample, eval.

Each imports its heavy machinery (torch, the training loop) inside the function, so
that `gen --help` and `gen run` never import torch. A `GenError` raised here becomes
a one-line `Error: ...` in the `gen` group (gen.core.cli).
"""
from __future__ import annotations

import click
from click.core import ParameterSource

from gen.core.checkpoint import TrainConfig
from gen.core.errors import GenError



# --- gen train ------------------------------------------------------------------------


# (option, type, help); the defaults come from TrainConfig.
TRAIN_OPTIONS = [
    ("data", str, "A UTF-8 text file, or 'shakespeare' (Tiny Shakespeare, downloaded once)."),
    ("tokenizer", str, "Tokenizer plugin and options, trained on the corpus: char, byte, bpe:vocab_size=512, ..."),
    ("model", str, "Model plugin: gpt, bigram, or one a plugin adds."),
    ("block-size", click.IntRange(min=1), "Context length in tokens."),
    ("n-layer", click.IntRange(min=1), "Transformer blocks (gpt)."),
    ("n-head", click.IntRange(min=1), "Attention heads per block (gpt)."),
    ("n-embd", click.IntRange(min=1), "Embedding width (gpt); divisible by --n-head."),
    ("dropout", click.FloatRange(0.0, 1.0, max_open=True), "Dropout probability (gpt)."),
    ("bias/--no-bias", bool, "Biases in Linear layers and LayerNorms (gpt)."),
    ("max-iters", click.IntRange(min=1), "Optimizer steps to train for (in all, counting resumed ones)."),
    ("batch-size", click.IntRange(min=1), "Sequences per micro-batch."),
    ("grad-accum", click.IntRange(min=1), "Micro-batches accumulated per optimizer step."),
    ("lr", click.FloatRange(min=0.0), "Peak learning rate."),
    ("min-lr", click.FloatRange(min=0.0), "Learning rate at the end of the cosine decay."),
    ("warmup-iters", click.IntRange(min=0), "Steps of linear warmup."),
    ("lr-decay-iters", click.IntRange(min=1), "Step where the cosine decay reaches --min-lr (default: --max-iters)."),
    ("weight-decay", click.FloatRange(min=0.0), "AdamW weight decay, applied to matrices only."),
    ("beta1", click.FloatRange(0.0, 1.0), "AdamW beta1."),
    ("beta2", click.FloatRange(0.0, 1.0), "AdamW beta2."),
    ("grad-clip", click.FloatRange(min=0.0), "Clip the gradient norm to this (0: off)."),
    ("eval-interval", click.IntRange(min=1), "Evaluate and checkpoint every this many steps."),
    ("eval-iters", click.IntRange(min=1), "Batches per split in each evaluation."),
    ("out", str, "Run directory: latest/ and best/ checkpoints and metrics.jsonl."),
    ("resume", "flag", "Continue the run in --out from its latest checkpoint."),
    ("overwrite", "flag", "Start over even if --out holds a run (replaced at the first checkpoint)."),
    ("device", str, "cpu, cuda, cuda:N or auto (cuda when there is one)."),
    ("dtype", click.Choice(["auto", "float32", "bfloat16"]), "Autocast precision (auto: bfloat16 if native)."),
    ("compile/--no-compile", bool, "torch.compile the model (~30 s on 2 CPU cores; then faster steps)."),
    ("seed", int, "Seed of the initial weights and the batch order."),
]


def _option_name(declaration: str) -> str:
    return declaration.split("/")[0].replace("-", "_")


def _train_option_decorators():
    decorators = []
    for declaration, kind, help_text in TRAIN_OPTIONS:
        default = getattr(TrainConfig, _option_name(declaration))
        if kind == "flag":
            decorators.append(click.option(f"--{declaration}", is_flag=True, help=help_text))
        elif kind is bool:
            decorators.append(click.option(f"--{declaration}", default=default, show_default=True, help=help_text))
        else:
            decorators.append(click.option(
                f"--{declaration}", type=kind, default=default, show_default=default is not None, help=help_text,
            ))
    return decorators


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise GenError("--config needs Python 3.11 or newer (or the tomli package)") from None
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise GenError(f"the config file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GenError(f"cannot read the config file {path!r}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise GenError(f"the config file {path!r} is not valid TOML: {error}") from None


def _options_from_file(path: str, command: click.Command, ctx: click.Context) -> dict:
    """The training options in a TOML file, checked and converted like command-line ones."""
    parameters = {parameter.name: parameter for parameter in command.params if parameter.name != "config_file"}
    values = {}
    for key, value in _read_toml(path).items():
        name = key.replace("-", "_")
        parameter = parameters.get(name)
        if parameter is None:
            known = ", ".join(sorted(parameters))
            raise GenError(f"the config file {path!r} has an unknown option {key!r}; known options: {known}")
        if isinstance(parameter, click.Option) and (parameter.is_flag or parameter.is_bool_flag):
            if not isinstance(value, bool):
                raise GenError(f"the config file {path!r}: {key} must be true or false, got {value!r}")
        else:
            if isinstance(value, (bool, dict, list)):
                raise GenError(f"the config file {path!r}: {key} = {value!r} is not a valid value")
            try:
                value = parameter.type.convert(value, parameter, ctx)
            except click.BadParameter as error:
                raise GenError(f"the config file {path!r}: {key} = {value!r}: {error.message}") from None
        values[name] = value
    return values


def _train(ctx, config_file, **options):
    """Train a model on a text corpus; longer recipes are in examples/*.toml.

    The run directory --out holds latest/ (what --resume continues), best/ (the lowest
    validation loss: what `gen sample` and `gen eval` load from --checkpoint out) and
    metrics.jsonl (one line per evaluation).
    """
    explicit = {name for name in options if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if config_file:
        from_file = _options_from_file(config_file, ctx.command, ctx)
        options.update({name: value for name, value in from_file.items() if name not in explicit})
        explicit |= set(from_file)

    from gen.core.train import train as run_training

    run_training(TrainConfig(**options), explicit=explicit, say=click.echo)


def _train_command() -> click.Command:
    function = click.pass_context(_train)
    for decorator in reversed(_train_option_decorators()):
        function = decorator(function)
    function = click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), default=None,
        help="A TOML file of these options (dashes or underscores); command-line options win.",
    )(function)
    return click.command(name="train")(function)


train = _train_command()


# --- gen sample -----------------------------------------------------------------------


@click.command()
@click.option("--checkpoint", default="out", show_default=True,
              help="A checkpoint directory, or a run directory (its best checkpoint).")
@click.option("--prompt", default="\n", show_default="a newline", help="Text to continue.")
@click.option("--sampler", "samplers", multiple=True, metavar="SPEC",
              help="NAME[:KEY=VALUE,...], e.g. top_p:p=0.9; repeat to chain filters (default: multinomial).")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed of the one random stream of the whole run.")
@click.option("--stop", multiple=True, metavar="TEXT", help="End a sample at this text (repeatable).")
@click.option("--no-cache", is_flag=True, help="Recompute the whole context at every step (no KV cache).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
def sample(checkpoint, prompt, samplers, max_new_tokens, num_samples, seed, stop, no_cache, device):
    """Stream text from a checkpoint written by `gen train`.

    Past the model's block_size the context slides: with the KV cache, once it is
    full the last block_size/2 tokens are fed again as a fresh prefill; without it,
    every step sees the last block_size tokens.
    """
    import numpy as np

    from gen.core.checkpoint import load_checkpoint
    from gen.core.generate import echo_samples
    from gen.core.sampling import build_sampler_chain
    from gen.core.torch_backend import TorchBackend
    from gen.core.train import resolve_device

    sampler = build_sampler_chain(list(samplers))
    torch_device = str(resolve_device(device))
    loaded = load_checkpoint(checkpoint, device=torch_device)
    backend = TorchBackend(loaded.model, device=torch_device, use_cache=not no_cache)
    echo_samples(backend, loaded.tokenizer, prompt, sampler, np.random.default_rng(seed),
                 max_new_tokens, num_samples, stop)


# --- gen eval -------------------------------------------------------------------------


@click.command(name="eval")
@click.argument("model", required=False, default=None)
@click.option("--checkpoint", default=None, help="A checkpoint or run directory (default: out).")
@click.option("--data", default=None, help="The corpus (default: the one the checkpoint was trained on).")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Windows scored at once.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto (checkpoints only).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a sentence.")
def evaluate(model, checkpoint, data, split, batch_size, device, as_json):
    """Exact loss of a checkpoint, or of MODEL.onnx, over a whole data split.

    The split is cut into non-overlapping block_size windows, so every token but the
    first is scored once; the split is the same one training used (same tokenizer,
    same 90/10 cut). Prints nats and bits per token and bits per character.
    """
    import json

    from gen.core.data import load_dataset
    from gen.core.scoring import exact_loss, loss_report

    if model is not None and checkpoint is not None:
        raise GenError("give either MODEL or --checkpoint, not both")
    if model is not None and model.endswith(".onnx"):
        if data is None:
            raise GenError("an ONNX file does not record its training data; give --data (e.g. --data shakespeare)")
        from gen.runtime.scoring import onnx_logits_function

        logits_of, block_size, tokenizer = onnx_logits_function(model)
        dataset = load_dataset(data, tokenizer=tokenizer)
        source = model
    else:
        logits_of, block_size, loaded = _checkpoint_logits_function(model or checkpoint or "out", device)
        data = data or loaded.train_args.get("data")
        if not data:
            raise GenError(f"checkpoint {str(loaded.path)!r} does not record its data; give --data")
        dataset = load_dataset(data, tokenizer_document=loaded.tokenizer_document)
        source = f"{loaded.path} (step {loaded.step})"
    ids = dataset.split(split)
    loss, tokens = exact_loss(logits_of, ids, block_size, batch_size=batch_size)
    # Every token but the first is scored; bits per character counts their characters.
    characters = len(dataset.tokenizer.decode(ids[1:].tolist()))
    report = loss_report(loss, tokens, characters)
    report.update(split=split, data=data, model=source)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{source} on the {split} split of {data!r} ({tokens:,} tokens scored)")
    click.echo(
        f"{split} loss {report['loss']:.4f} nats/token, {report['bits_per_token']:.4f} bits/token, "
        f"{report['bits_per_character']:.4f} bits/char"
    )


def _checkpoint_logits_function(path: str, device: str):
    """(logits_function, block_size, checkpoint) for scoring a checkpoint with torch."""
    import numpy as np
    import torch

    from gen.core.checkpoint import load_checkpoint
    from gen.core.train import resolve_device

    torch_device = resolve_device(device)
    loaded = load_checkpoint(path, device=str(torch_device))

    def logits_of(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits, _ = loaded.model(torch.from_numpy(ids).to(torch_device))  # (B, T, vocab)
        return logits.float().cpu().numpy()

    return logits_of, int(loaded.model.config.block_size), loaded


COMMANDS = [train, sample, evaluate]
