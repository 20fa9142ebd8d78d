"""``llm-int8`` command line: parse arguments, call the library, print. Nothing else.

One module per subcommand; each defines ``register(subparsers)`` and is listed in ``_COMMANDS``.

Errors are one line on stderr, never a traceback (``--debug`` shows it): a bad argument, a bad
input file or model path exits 2, anything unexpected 1, Ctrl-C 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from .._version import __version__

__all__ = ["build_parser", "main"]

_COMMANDS = ("demo", "generate", "evaluate", "quantize", "outliers", "env")

# what bad input raises (a missing or corrupt file, a bad value, an unparsable pattern): exit 2
_INPUT_ERRORS = (OSError, ValueError, TypeError, LookupError, re.error)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``llm-int8 eval: error: ...``), exit status 2, as argparse does."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llm-int8", description="LLM.int8() for PyTorch and Hugging Face models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse before Python 3.12 takes "--opt=--" as an empty list, without calling the option's type
    empty = [name for name, value in vars(args).items() if isinstance(value, list) and not value]
    if empty:
        parser.error(f"argument --{empty[0].replace('_', '-')}: expected a value")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"llm-int8 {args.command}: interrupted", file=sys.stderr)
        return 130
    except _INPUT_ERRORS as err:
        if args.debug:
            raise
        print(f"llm-int8 {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(
            f"llm-int8 {args.command}: internal error: {type(err).__name__}: {_one_line(err)} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
