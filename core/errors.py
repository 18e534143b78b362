"""The one exception type that the command line turns into a one-line error."""


class GenError(Exception):
    """A user-facing error: bad input, a missing file, an unknown plugin.

    The message says what was wrong and what to do. The CLI prints it as
    `Error: <message>` and exits with status 1, without a traceback.
    """
