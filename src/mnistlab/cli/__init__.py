"""The ``mnistlab`` command line: parse (:mod:`.parser`) -> call the library (:mod:`.commands`) -> print
(:mod:`.render`).

Heavy modules (torch, matplotlib, sklearn) are imported inside each command, so ``mnistlab --help`` and bad
flags answer instantly. A :class:`MnistlabError` becomes one ``mnistlab: error: ...`` line and exit code 2
(library messages name parameters as `name`; they are shown as the matching ``--flag``); a closed pipe
(``mnistlab runs list | head``) ends the command quietly; tracebacks are left for real bugs.
"""

from __future__ import annotations

import gc
import os
import re
import sys
from collections.abc import Sequence

from mnistlab.cli.parser import INVERT_CHOICES, build_parser, flag_names
from mnistlab.errors import MnistlabError, TrainingInterrupted

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "INVERT_CHOICES", "build_parser", "flag_text", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_PARAMETER = re.compile(r"`([a-z][a-z_]*)`")


def flag_text(message: str) -> str:
    """A library message with its `parameter` names shown as the CLI's flags (`lr` -> --lr, `run_dir` -> --out)."""
    flags = flag_names()
    return _PARAMETER.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as Unix tools do, without a flush error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mnistlab`` console script; returns the exit code."""
    code = _main(argv)
    if argv is None:
        # Run as a program: everything dies with the process. Freezing the heap spares the interpreter's final
        # garbage collections a walk over torch's millions of objects (measured: 1.5-4 s of exit under load,
        # 0.4 s frozen). Not for calls from Python (tests, notebooks), whose later garbage must still be found.
        gc.freeze()
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` hands it on to each rank
    try:
        return int(args.handler(args))
    except MnistlabError as exc:
        print(f"mnistlab: error: {flag_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as exc:
        if exc.epochs_completed:
            print(f"mnistlab: {exc}; `mnistlab evaluate {exc.run_dir}` scores it, "
                  f"`mnistlab train --resume {exc.run_dir}` continues it", file=sys.stderr)
        else:
            print(f"mnistlab: interrupted before the first epoch completed; {exc.run_dir} was not kept",
                  file=sys.stderr)
        # 128 + the signal, as a shell reports a process a signal ended (130 for Ctrl-C, 143 SIGTERM, 129 SIGHUP).
        return 128 + exc.signum
    except KeyboardInterrupt as exc:  # SIGTERM/SIGHUP during training arrive as a KeyboardInterrupt with signum
        print("mnistlab: interrupted", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", EXIT_INTERRUPTED - 128))
    except BrokenPipeError:
        return _quiet_broken_pipe()
