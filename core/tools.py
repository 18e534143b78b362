"""The commands around training and export: `gen plot`, `gen info` and `gen import`.

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
    ln(vocab) and the learning rate (second axis). Needs matplotlib: pip install 'gen[plot]'.
    """
    from gen.core.plot import plot_run

    click.echo(f"wrote {plot_run(run_dir, output)}")


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

    from gen.core.info import describe, format_info

    described = describe(path)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for line in format_info(described):
        click.echo(line)


@hookimpl
def register_commands(cli):
    cli.add_command(plot)
    cli.add_command(info)
