"""One phase timer and one memory-budget rule for every method and observer."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["PhaseTimer", "workspace_bytes"]


def workspace_bytes(device: torch.device | str) -> int:
    """The scratch memory a batched computation (Fisher chunks, inverses, eliminations) may take at once:
    2 GiB on a GPU, 256 MiB on a CPU."""
    return (2 << 30) if torch.device(device).type == "cuda" else (256 << 20)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class PhaseTimer:
    """Adds the wall time of named phases to ``timings`` (``{phase: seconds}``), synchronising CUDA at both ends so
    that asynchronous kernels are charged to the phase that launched them.

    ```python
    >>> timings = {}
    >>> timer = PhaseTimer(timings)
    >>> with timer("selection"):
    ...     _ = sum(range(1000))
    >>> sorted(timings)
    ['selection']
    ```
    """

    def __init__(self, timings: dict[str, float] | None = None):
        self.timings: dict[str, float] = timings if timings is not None else {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start
