"""The `gen` command line. Commands that train or export import torch only when run."""
from __future__ import annotations

import json

import click

from gen.core.errors import GenError
from gen.core.plugins import KINDS, get_plugin_manager, get_registry, plugin_warnings, record_failure


class GenGroup(click.Group):
    """A click group that prints a GenError as one line (`Error: ...`) and exits 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GenError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=GenGroup)
@click.version_option(package_name="gen")
@click.pass_context
def cli(ctx):
    """gen: train small language models, export them to ONNX, generate text."""
    if ctx.invoked_subcommand != "plugins":
        for line in plugin_warnings():
            click.echo(line, err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
def plugins(as_json):
    """List registered models, samplers and tokenizers, and plugins that failed to load."""
    registry = get_registry()
    rows = [
        {"kind": kind, "name": name, "provider": entry.provider, "description": entry.description}
        for kind in KINDS
        for name in registry.names(kind)
        for entry in [registry.entry(kind, name)]
    ]
    failed = [{"name": f.name, "provider": f.provider, "error": f.error} for f in registry.failures]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "failed": failed}, indent=2))
        return
    widths = [max([len(h)] + [len(row[h]) for row in rows]) for h in ("kind", "name", "provider")]
    header = ("KIND", "NAME", "PROVIDER")
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  DESCRIPTION")
    for row in rows:
        cells = [row["kind"], row["name"], row["provider"]]
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + row["description"])
    for failure in failed:
        click.echo(f"failed: {failure['name']} from {failure['provider']}: {failure['error']}")


def _add_builtin_commands() -> None:
    # Imported here, not at the top, so that `import gen.core.cli` stays light.
    from gen.core import commands
    from gen.export.cli import export
    from gen.runtime.cli import run

    for command in [*commands.COMMANDS, export, run]:
        cli.add_command(command)


def _add_plugin_commands() -> None:
    # Each plugin's hook on its own, so that one that raises is reported (as a
    # warning, and by `gen plugins`) and the others' commands still arrive.
    for implementation in get_plugin_manager().hook.register_commands.get_hookimpls():
        try:
            implementation.function(cli=cli)
        except Exception as error:
            record_failure(implementation.plugin_name, error)


_add_builtin_commands()
_add_plugin_commands()


def main() -> None:
    cli()
