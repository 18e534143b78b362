"""gen.core.cli: the `gen` command line, the top layer (it may import every other layer; nothing
imports it but its own modules). Commands that train or export import torch only when run.

    __init__.py            the `gen` group and `gen plugins`
    commands.py            gen train, gen prepare, gen sample
    generation_options.py  the options gen sample and gen run share, and the printing of samples
    runtime_commands.py    gen run, gen serve, gen eval
    export_commands.py     gen export
    tools.py               gen info, gen plot, gen attention, gen import
    info.py, plot.py       what gen info and gen plot show
    inside.py              what gen attention draws (attention weights, a bigram's table)
    backends.py            a path -> an ONNX model or a torch checkpoint, for gen eval
    reference.py           docs/cli.md from the commands' own help

The group itself holds only `gen plugins`; every other command (train, prepare, sample, run,
eval, export, and any a third-party plugin adds) arrives through the
`register_commands` hook when this module is imported.
"""
from __future__ import annotations

import json

import click

from gen.core.errors import GenError
from gen.core.registry import KINDS, get_plugins, get_registry


# What the `train` extra brings (pyproject.toml), which only the torch side imports.
TRAIN_EXTRA_MODULES = ("torch", "onnx", "onnxscript", "safetensors", "tqdm")


class GenGroup(click.Group):
    """A click group that prints a GenError as one line (`Error: ...`) and exits 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GenError as error:
            raise click.ClickException(str(error)) from None
        except ModuleNotFoundError as error:
            # The runtime-only install (pip install gen) has no torch: commands that
            # train, sample a checkpoint, import or export say which extra they need.
            if error.name is None or error.name.split(".")[0] not in TRAIN_EXTRA_MODULES:
                raise
            raise click.ClickException(
                f"gen {ctx.invoked_subcommand} needs {error.name.split('.')[0]}, which the runtime-only install leaves out: "
                f"pip install 'gen[train]' (gen run, gen serve and gen eval of an .onnx file need no torch)"
            ) from None


# Every option has an environment default, GEN_<COMMAND>_<OPTION> (GEN_TRAIN_MAX_ITERS
# for `gen train --max-iters`), which `--help` shows; the command line wins over it.
ENVIRONMENT_PREFIX = "GEN"
# Shell completion is click's: eval "$(_GEN_COMPLETE=bash_source gen)" (or zsh_source, fish_source).
COMPLETE_VARIABLE = "_GEN_COMPLETE"


@click.group(cls=GenGroup)
@click.version_option(package_name="gen")
@click.pass_context
def cli(ctx):
    """gen: train small language models, export them to ONNX, generate text.

    Every option can also be set by an environment variable, shown in each command's
    help: GEN_TRAIN_MAX_ITERS=3000 gen train. Shell completion for bash, zsh and
    fish: eval "$(_GEN_COMPLETE=bash_source gen)" (see the README).
    """
    if ctx.invoked_subcommand != "plugins":
        for line in get_plugins().warnings():
            click.echo(line, err=True)


def _options_row(entry) -> tuple[dict | None, str]:
    """An entry's options as JSON ({name: {type, default}}; None when they cannot be listed
    here) and as text for the table."""
    try:
        options = entry.options_json()
    except GenError:
        options = None
    return options, entry.options_text() or "none"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
def plugins(as_json):
    """List registered models, samplers, tokenizers, constraints and trackers, their options, and failed plugins."""
    registry = get_registry()
    rows = []
    for kind in KINDS:
        for name in registry.names(kind):
            entry = registry.entry(kind, name)
            options, options_text = _options_row(entry)
            rows.append({"kind": kind, "name": name, "provider": entry.provider,
                         "description": entry.description, "options": options, "options_text": options_text})
    failed = [{"name": f.name, "provider": f.provider, "error": f.error} for f in get_plugins().failures]
    if as_json:
        documents = [{key: value for key, value in row.items() if key != "options_text"} for row in rows]
        click.echo(json.dumps({"plugins": documents, "failed": failed}, indent=2))
        return
    widths = [max([len(h)] + [len(row[h]) for row in rows]) for h in ("kind", "name", "provider")]
    header = ("KIND", "NAME", "PROVIDER")
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  DESCRIPTION")
    for row in rows:
        cells = [row["kind"], row["name"], row["provider"]]
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + row["description"])
        click.echo(" " * (widths[0] + 2) + "options: " + row["options_text"])
    for failure in failed:
        click.echo(f"failed: {failure['name']} from {failure['provider']}: {failure['error']}")


def add_environment_variables(command: click.Command, path: tuple[str, ...] = (ENVIRONMENT_PREFIX,)) -> None:
    """Give each option of `command` and the commands under it the environment variable
    GEN_<COMMAND>_<OPTION>, named after the command and the option as typed
    (`gen eval --json` reads GEN_EVAL_JSON), and have `--help` show it.

    (click's auto_envvar_prefix would name it after the Python parameter instead,
    GEN_EVAL_AS_JSON.) Eager options (--help, --version) are actions, not settings.
    """
    for parameter in command.params:
        if isinstance(parameter, click.Option) and not parameter.is_eager and parameter.envvar is None:
            flag = max((opt for opt in parameter.opts if opt.startswith("--")), key=len, default=None)
            if flag is not None:
                parameter.envvar = "_".join(path + (flag[2:],)).replace("-", "_").upper()
                parameter.show_envvar = True
    for name, subcommand in getattr(command, "commands", {}).items():
        add_environment_variables(subcommand, path + (name,))


get_plugins().add_commands(cli)
add_environment_variables(cli)


def main() -> None:
    cli.main(prog_name="gen", complete_var=COMPLETE_VARIABLE)
