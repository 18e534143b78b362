"""The documentation kept in sync with the code: docs/cli.md is what the commands'
own help says (regenerate it with `make docs`)."""
from pathlib import Path

import click

from gen.core.cli import cli
from gen.core.cli.reference import render

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_cli_reference_is_up_to_date(fresh_plugins):
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date: run `make docs` (python -m gen.core.cli.reference docs/cli.md)"
    )


def test_the_cli_reference_has_every_command_and_option():
    page = render()
    for name, command in cli.commands.items():
        if not command.callback.__module__.startswith("gen."):
            continue
        assert f"## gen {name}\n" in page
        for parameter in command.params:
            for flag in parameter.opts if isinstance(parameter, click.Option) else ():
                assert flag in page, (name, flag)
