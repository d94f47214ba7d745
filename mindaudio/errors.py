"""The project's user-facing errors and how a command-line entry point reports them.

The bottom layer: every module may raise `UserError` subclasses, and every entry point (the
top-level scripts through `mindaudio.cli`, and the data layer's own scripts such as the
LibriSpeech preparer) reports them through `report_user_errors`, so a user's mistake always ends
in one line and the same exit status.
"""
import functools
import sys
from typing import Callable, Optional

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem the user can fix (a bad file, key, path or value), not a bug in this code.

    The project's user-facing errors derive from it; the command-line entry points print its
    message as one line and exit non-zero instead of showing a traceback. The message names the
    file, key or line at fault.
    """


def one_line(message: object) -> str:
    """`message` on one line (yaml's and MindSpore's messages span several)."""
    return " | ".join(line.strip() for line in str(message).splitlines() if line.strip()) or "(no message)"


def report_user_errors(main: Callable[..., Optional[int]]) -> Callable[..., int]:
    """`main` returning its exit status, except that a `UserError` becomes `error: <message>` on
    stderr and status 2, and Ctrl-C one line and status 130. Other exceptions are bugs: they
    propagate with their traceback."""
    @functools.wraps(main)
    def reporting(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            sys.stdout.flush()
            print(f"error: {one_line(err)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            sys.stdout.flush()
            print("error: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    return reporting


def run_cli(main: Callable[[], Optional[int]]) -> None:
    """Run an entry point's `main` through `report_user_errors` and exit with its status."""
    sys.exit(report_user_errors(main)())
