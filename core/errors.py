"""The one exception type that the command line turns into a one-line error."""
import re


class GenError(Exception):
    """A user-facing error: bad input, a missing file, an unknown plugin.

    The message says what was wrong and what to do. The CLI prints it as
    `Error: <message>` and exits with status 1, without a traceback.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): what a
    one-line error quotes of another library's multi-line message. A leading source location
    in brackets (gloo's "[../third_party/gloo/...:123] Connection closed") is left out."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip())
    return text.splitlines()[0] if text else type(error).__name__
