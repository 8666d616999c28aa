"""Returning freed memory to the OS during training and evaluation.

glibc keeps freed heap pages: batches of varying shapes (packed rows, pairs, generated answers)
leave the heap fragmented, and the trainer's resident memory crept up step after step (evaluation
went from 2.7 to 4.2 GB on SmolLM2, BENCHMARKS.md). ``malloc_trim(0)`` hands every free page back,
in the middle of the heap too, at the cost of a few milliseconds: done after each forward and
backward pass and each evaluation batch, it keeps memory at what the step needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


@cache
def _trim():  # noqa: ANN202 - the libc function, or None where there is none to call
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def trim() -> None:
    """Give the heap's free pages back to the OS (glibc only; elsewhere nothing)."""
    if (malloc_trim := _trim()) is not None:
        malloc_trim(0)


def release() -> None:
    """Between steps: collect the finished step's objects, then give their memory back."""
    gc.collect()
    trim()


def trim_callback():  # noqa: ANN201 - a transformers TrainerCallback
    """A TrainerCallback trimming the heap after every forward and backward pass (micro-batch)."""
    from transformers import TrainerCallback

    class _Trim(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001, ARG002
            trim()

        def on_step_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001, ARG002
            trim()

    return _Trim()
