"""What the CLI tests share: running gen in-process with click's CliRunner, and the check
that a command failed cleanly (exit status 1, its last line one `Error: ...`, no traceback)."""
from click.testing import CliRunner

from gen.core.cli import cli


def gen(*arguments):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
