"""What the CLI tests share: running gen in-process with click's CliRunner, the check that
a command failed cleanly (exit status 1, its last line one `Error: ...`, no traceback), and a
plugin that stops `gen train` at a step (to interrupt a run, then resume it)."""
from click.testing import CliRunner

from gen.core.cli import cli
from gen.core.hookspecs import hookimpl


def gen(*arguments):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


class StopAtStep:
    """A plugin whose on_eval hook ends training at a given step."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def on_eval(self, step, metrics):
        return step >= self.step
