"""The error boundary of every command (`python -m infer|evaluate|export|demo|shards.*`, `train/run.py`).

`run_command(main, prog)` runs `main(argv)` and turns what a user can cause into one line on stderr and an exit
status, and lets real bugs show their traceback:
- an expected failure (`CommandError`, `ValueError`, `OSError`: a bad input, config or model file, a full or
  read-only disk, a port in use) -> `PROG: error: MESSAGE` with the fix, exit 1; `--debug` shows the traceback;
- Ctrl+C -> `PROG: stopped (Ctrl+C)`, exit 130; SIGTERM -> `PROG: stopped (SIGTERM)`, exit 143 (128 + signal);
- any other exception (`TypeError`, `KeyError`, `AttributeError`, ...) is a bug: its traceback is printed.
SIGTERM is raised as `Terminated` (a `BaseException`, like KeyboardInterrupt), so `finally` blocks and context
managers run and a command cleans up its temporary files as it does on Ctrl+C.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable

DEBUG_FLAG = "--debug"

# errno -> what the user can do about it (the OS's own words say what went wrong)
OS_FIXES = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "check the permissions, or write somewhere else",
    errno.EPERM: "check the permissions, or write somewhere else",
    errno.EEXIST: "remove it or choose another name",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
    errno.EADDRINUSE: "another program uses that port: stop it or choose another --port",
}


class CommandError(Exception):
    """An expected failure: the message names the thing and the fix (printed as one line, no traceback)."""


class Terminated(BaseException):
    """SIGTERM (docker stop, systemd, kill): unwinds the stack like KeyboardInterrupt, so cleanup runs."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def one_line(err: BaseException) -> str:
    """The error's message on one line; an OSError also gets its path and the fix its errno suggests."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        fix = OS_FIXES.get(err.errno or 0)
        text = f"{where}{err.strerror}" + (f" ({fix})" if fix else "")
    else:
        text = str(err) or type(err).__name__
        if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
            text = err.args[0]  # str(KeyError) adds quotes around its message
    return " ".join(text.split())


def run_command(main: Callable[[list[str]], int | None], prog: str, argv: list[str] | None = None) -> int:
    """Run `main(argv)` inside the boundary; returns the exit status (`sys.exit(run_command(...))`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or bool(os.environ.get("ML_RESTORATION_DEBUG"))
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print(f"\n{prog}: stopped (Ctrl+C)", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: stopped (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (CommandError, ValueError, OSError) as err:
        if debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
    return int(status or 0)
