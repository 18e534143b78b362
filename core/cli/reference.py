"""docs/cli.md, the command-line reference, generated from the commands' own help.

    python -m gen.core.cli.reference docs/cli.md      # what `make docs` runs

Only gen's own commands and plugins are described (GEN_PLUGINS is set empty while
rendering), at a fixed width of 80 columns, so the page is the same on every
machine; tests/test_docs.py renders it again and compares.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

WIDTH = 80
HEADER = """# Command-line reference

Every `gen` command with its `--help`. Each option can also be set through the
environment variable shown beside it (the command line wins); see the README for
shell completion. This page is generated from the commands themselves by `make docs`
(`python -m gen.core.cli.reference docs/cli.md`), and a test checks that it is up to
date.
"""


def _is_builtin(command: click.Command) -> bool:
    return (getattr(command.callback, "__module__", "") or "").startswith("gen.")


def _sections(command: click.Command, context: click.Context):
    """(full name, help text) of `command` and of every built-in command under it, by name."""
    yield context.command_path, command.get_help(context)
    for name in sorted(getattr(command, "commands", {})):
        subcommand = command.commands[name]
        if _is_builtin(subcommand):
            yield from _sections(subcommand, click.Context(subcommand, info_name=name, parent=context,
                                                           terminal_width=WIDTH))


def render() -> str:
    """The reference page, as markdown."""
    from gen.core import registry as plugins
    from gen.core.cli import cli

    saved = os.environ.get("GEN_PLUGINS")
    os.environ["GEN_PLUGINS"] = ""  # built-in plugins only (help lists the registered models)
    plugins.reset_plugins()
    try:
        root = click.Context(cli, info_name="gen", terminal_width=WIDTH)
        parts = [HEADER]
        for name, text in _sections(cli, root):
            parts.append(f"## {name}\n\n```text\n{text}\n```\n")
        return "\n".join(parts)
    finally:
        if saved is None:
            del os.environ["GEN_PLUGINS"]
        else:
            os.environ["GEN_PLUGINS"] = saved
        plugins.reset_plugins()


def main(arguments: list[str]) -> None:
    from gen.core.files import replace_file_atomically

    if len(arguments) != 1:
        raise SystemExit("usage: python -m gen.core.cli.reference docs/cli.md")
    with replace_file_atomically(arguments[0]) as temporary:
        Path(temporary).write_text(render(), encoding="utf-8")
    print(f"wrote {arguments[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
