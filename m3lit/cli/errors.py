"""Clean error output for the console scripts: the message, not a traceback (``HYDRA_FULL_ERROR=1`` keeps it).

Errors of input and configuration (``ValueError`` and its subclasses such as the data errors, ``OSError`` such as
a missing file, a non-finite loss) are what a user can fix from the message; anything else is a bug and keeps its
traceback."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

USER_ERRORS = (ValueError, OSError, FloatingPointError)
SIGTERM_EXIT = 128 + 15
T = TypeVar("T")


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_errors(prog: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator of a console script's entry function: a user error exits with status 1 printing
    ``<prog>: error: <message>`` on stderr (a ``SystemExit`` carrying it); SIGTERM (after its checkpoint) exits
    with 143."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def run(*args, **kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except SystemExit as err:
                if type(err).__name__ != "SIGTERMException":  # Lightning's (checked by name: no import here)
                    raise
                print(f"{prog}: stopped by SIGTERM", file=sys.stderr, flush=True)
                sys.exit(SIGTERM_EXIT)
            except USER_ERRORS as err:
                if full_errors():
                    raise
                raise SystemExit(f"{prog}: error: {err}\n(HYDRA_FULL_ERROR=1 shows the traceback)") from None

        return run

    return wrap
