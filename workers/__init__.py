"""Broker set-up and thin Dramatiq actors: take an id, open one transaction, call one `tasks/` function.

`dramatiq workers` names this package as the broker module: in the processes of that command (and only
there) the package is the entry module and builds the runtime as `workers.app` does. Anywhere else,
importing `workers` or one of its modules builds nothing.
"""
import importlib
import os
import sys

ENTRY = "workers"  # the broker module `dramatiq workers` names


def named_by_dramatiq(argv: list[str]) -> bool:
    """Whether `argv` is Dramatiq's command (`dramatiq …` or `python -m dramatiq …`) with this package as its
    broker module. Dramatiq's worker processes keep the command's argv, forked or spawned."""
    if not argv:
        return False
    program = argv[0].replace(os.sep, "/")
    if os.path.basename(program) != "dramatiq" and not program.endswith("/dramatiq/__main__.py"):
        return False
    from dramatiq.cli import make_argument_parser

    try:
        args, _ = make_argument_parser().parse_known_args(argv[1:])
    except SystemExit:  # `--help`, `--version`, or no broker: Dramatiq answers that itself
        return False
    return args.broker == ENTRY


if named_by_dramatiq(sys.argv):
    # builds the runtime from the environment (and sets Dramatiq's broker); no name bound here: `workers.runtime`
    # stays the module it is
    importlib.import_module("workers.app")
