"""What the reliability tests share: running gen in-process, and the check that a command
failed cleanly (one line, exit status 1, no traceback)."""
from click.testing import CliRunner

from gen.core.cli import cli

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--warmup-iters", "2"]


def gen(*arguments, **kwargs):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments], **kwargs)


def assert_one_line_error(result, *fragments):
    """A clean failure: exit status 1, one `Error: ...` line, no uncaught exception.

    (The error goes to stderr, progress lines to stdout: their order in the captured
    output is not the order they were written in.)
    """
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
