"""Numeric flag types with ranges, so an absurd number is one usage line (exit 2) before
any work, never an overflow deep inside TensorFlow or protobuf."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dnntune.config import MAX_BATCH_SIZE, MAX_RUNS, MAX_THREADS, MAX_WARMUP_RUNS


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` taking a whole number from ``low`` to ``high``.

    Example:
        >>> int_in(1, 8)("4")
        4
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {text}")
        return value
    parse.__name__ = "whole number"
    return parse


BATCH = int_in(1, MAX_BATCH_SIZE)
RUNS = int_in(1, MAX_RUNS)
WARMUP_RUNS = int_in(0, MAX_WARMUP_RUNS)
THREADS = int_in(1, MAX_THREADS)
