"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse

from ..config import ACTIVATION_QUANTIZERS, DEFAULT_ACTIVATION, DEFAULT_THRESHOLD

__all__ = ["add_int8_options", "nonnegative_int", "positive_int", "threshold"]


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def threshold(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"threshold must be >= 0 (0 disables decomposition), got {text}")
    return value


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
