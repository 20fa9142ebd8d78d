"""Argument types shared by the subcommands: each rejects a bad value with a one-line reason."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from ..config import ACTIVATION_QUANTIZERS, DEFAULT_ACTIVATION, DEFAULT_THRESHOLD

__all__ = [
    "add_int8_options",
    "nonempty_text",
    "nonnegative_int",
    "output_file",
    "positive_int",
    "regex",
    "shard",
    "threshold",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):  # as Int8Config: NaN and inf are refused
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 disables decomposition), got {text}")
    return value


def nonempty_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"not a regular expression: {text!r} ({err})") from None
    return text


def output_file(text: str) -> str:
    """A file to write at the end of a run: checked before the run, not after it."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not a directory")
    return text


def shard(text: str) -> tuple[int, int]:
    """``i/n``: the i-th (0-based) of n contiguous parts of a task list."""
    i, sep, n = text.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/4), got {text!r}") from None
    if not sep or n <= 0 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return i, n


def add_int8_options(parser: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    """``--threshold`` and ``--activation``; with ``from_checkpoint`` their default is the saved value."""
    saved = "the checkpoint's, else " if from_checkpoint else ""
    parser.add_argument(
        "--threshold",
        type=threshold,
        default=None if from_checkpoint else DEFAULT_THRESHOLD,
        help=f"outlier threshold α, 0 = no decomposition (default: {saved}{DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--activation",
        choices=ACTIVATION_QUANTIZERS,
        default=None if from_checkpoint else DEFAULT_ACTIVATION,
        help=f"per-token activation codes (default: {saved}{DEFAULT_ACTIVATION})",
    )
