"""Unreadable items met while reading data lazily: skipped with one line naming the file, and counted.

Datasets of tens of thousands of files are never checked up front (start-up would grow with the data).
An item whose file turns out corrupt when it is first read is marked, reported in one line on stderr and
replaced by the next readable item, so one bad file among 10,000 costs a line, not the run. The marks
live in shared memory, so the DataLoader's worker processes and the main process see the same ones and
`Task.epoch_log` can count them for `log.jsonl`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import torch

from panformer.engine.errors import UserError

T = TypeVar("T")


class SkippedItems:
    """Which of a dataset's `size` items are unreadable (one shared bool each: an index, not the data)."""

    def __init__(self, size: int) -> None:
        self.marks = torch.zeros(size, dtype=torch.bool).share_memory_()

    def __contains__(self, index: int) -> bool:
        return bool(self.marks[index])

    def __len__(self) -> int:
        return int(self.marks.sum())

    def add(self, index: int, reason: str) -> None:
        """Mark item `index` and say why in one line (two workers meeting it at once may both say so)."""
        if not self.marks[index]:
            self.marks[index] = True
            # One write per line: lines from several worker processes never interleave.
            sys.stderr.write(f"skipped: {reason}\n")
            sys.stderr.flush()

    def read(self, index: int, read: Callable[[int], T]) -> T:
        """`read(index)`, or the first readable item after it when its file is bad (a `UserError`)."""
        size = len(self.marks)
        for offset in range(size):
            i = (index + offset) % size
            if i in self:
                continue
            try:
                return read(i)
            except UserError as err:
                self.add(i, str(err))
        raise UserError(f"all {size} items of the dataset are unreadable (each was reported above); check the data")
