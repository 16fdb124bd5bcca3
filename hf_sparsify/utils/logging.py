"""Logging and progress bars, through transformers' logging so that one verbosity setting rules both."""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

T = TypeVar("T")


def get_logger(name: str):
    return hf_logging.get_logger(name)


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, disable: bool = False, unit: str = "it", leave: bool = False):
    """A tqdm progress bar that honours ``disable_tqdm=True`` and transformers' global progress-bar switch
    (``transformers.utils.logging.disable_progress_bar()`` / ``HF_HUB_DISABLE_PROGRESS_BARS``)."""
    disabled = disable or not hf_logging.is_progress_bar_enabled() or os.environ.get("HF_SPARSIFY_DISABLE_TQDM") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=disabled, unit=unit, leave=leave, dynamic_ncols=True)
