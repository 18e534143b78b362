"""The commands around training and export: `gen plot`, `gen attention`, `gen info` and `gen import`.

Each imports what it needs when it runs (matplotlib for a plot, torch for an
import), so that the `gen` command line starts fast and `gen info` of an export
never imports torch. They reach `gen` through the `register_commands` hook, as a
third-party plugin's commands would.
"""
from __future__ import annotations

import click

from gen.core.hookspecs import hookimpl


@click.command()
@click.argument("run_dir", default="out", required=False, type=click.Path(file_okay=False, path_type=str))
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="The PNG to write (default: RUN_DIR/loss.png).")
def plot(run_dir, output):
    """Draw the loss curves of a training run to a PNG.

    RUN_DIR (default: out) is the --out directory of `gen train`. The picture shows
    the training and validation losses at every evaluation, the uniform baseline
    ln(vocab), the best checkpoint (a star) and the learning rate (second axis). Needs matplotlib: pip install 'gen[plot]'.
    """
    from gen.core.cli.plot import plot_run

    click.echo(f"wrote {plot_run(run_dir, output)}")


@click.command()
@click.option("--checkpoint", default=None, type=click.Path(path_type=str),
              help="A checkpoint directory, or a run directory (its best checkpoint).")
@click.option("--model", "model_path", default=None, metavar="MODEL.onnx", type=click.Path(path_type=str),
              help="Instead of --checkpoint, an export (gpt: made with gen export --attention).")
@click.option("--prompt", default="ROMEO:\nBut soft", show_default=True,
              help="The text whose attention is drawn (its last block_size tokens); a bigram ignores it.")
@click.option("--out", "output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The PNG to write.")
def attention(checkpoint, model_path, prompt, output):
    """Draw what a model looks at to a PNG.

    For gpt, a grid of heatmaps, a row of heads per layer: in each, row t is how
    much the token at t weighs each token up to it (the tril-masked softmax of
    queries and keys), with the prompt's characters on the axes. For bigram, its
    vocab x vocab table of next-token probabilities. Needs matplotlib:
    pip install 'gen[plot]'.
    """
    from gen.core.cli.inside import draw_view, inside_view
    from gen.core.cli.plot import check_matplotlib
    from gen.core.errors import GenError

    if (checkpoint is None) == (model_path is None):
        raise GenError("give --checkpoint RUN or --model MODEL.onnx (one of them)")
    check_matplotlib()  # before the model is loaded
    view = inside_view(checkpoint or model_path, prompt)
    if view.note:
        click.echo(f"drawing {view.note}")
    click.echo(f"wrote {draw_view(view, output)}")


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of text.")
def info(path, as_json):
    """Describe a checkpoint, a run directory or an ONNX export.

    The model and its options, the parameter count, the tokenizer and its vocabulary,
    the block size, the size on disk, and the training step and validation loss
    recorded at training time; for an export also its opset, quantization and
    whether it has a KV cache. Reads the files only: no torch, no onnxruntime session.
    """
    import json

    from gen.core.cli.info import describe, format_info

    described = describe(path)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for line in format_info(described):
        click.echo(line)


@click.group(name="import")
def import_group():
    """Turn a model trained with another tool into a gen checkpoint."""


@import_group.command()
@click.argument("ckpt", type=click.Path(dir_okay=False, path_type=str))
@click.option("--meta", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="nanoGPT's meta.pkl: the character vocabulary of its dataset (data/shakespeare_char/meta.pkl).")
@click.option("--tokenizer", default=None,
              help="Instead of --meta, a tokenizer: hf:path=tokenizer.json (GPT-2's, for a model on GPT-2 tokens).")
@click.option("--data", default=None,
              help="The corpus the model learned from, recorded for gen eval (default: the input.txt beside "
                   "--meta, as nanoGPT's prepare.py leaves it; else none).")
@click.option("--out", default="out", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="The gen checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def nanogpt(ckpt, meta, tokenizer, data, out, overwrite):
    """Import CKPT, a ckpt.pt written by nanoGPT's train.py.

    Its GPT becomes gen's gpt model, weight for weight, so that gen sample, gen eval,
    gen export and gen run work on it. Neither file can run code: CKPT is read with
    torch.load(weights_only=True) and meta.pkl by an unpickler that builds plain data
    only; a file holding anything else is refused.
    """
    from gen.core.training.nanogpt import import_nanogpt

    import_nanogpt(ckpt, out, meta=meta, tokenizer=tokenizer, data=data, overwrite=overwrite, say=click.echo)


@import_group.command(name="hf")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option("--data", default=None, help="The corpus to record for gen eval and fine-tuning (default: none).")
@click.option("--out", default="out", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="The gen checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def hf(folder, data, out, overwrite):
    """Import FOLDER, a Hugging Face GPT-2 model folder (save_pretrained's).

    config.json, model.safetensors (or pytorch_model.bin, read with
    torch.load(weights_only=True) only) and tokenizer.json (or vocab.json and
    merges.txt) become gen's gpt model with the hf tokenizer, GPT-2's gelu_new as
    gpt's activation gelu_tanh. A config that gpt cannot compute exactly (another
    activation or layer-norm epsilon, scaled or reordered attention, another MLP
    width, an untied head) is refused, naming the field.
    """
    from gen.core.training.hf import import_hf

    import_hf(folder, out, data=data, overwrite=overwrite, say=click.echo)


@hookimpl
def register_commands(cli):
    cli.add_command(plot)
    cli.add_command(attention)
    cli.add_command(info)
    cli.add_command(import_group)
