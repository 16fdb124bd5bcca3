"""How much memory a device has free, without psutil: ``/proc/meminfo`` (Linux), ``os.sysconf`` elsewhere, and
``torch.cuda.mem_get_info`` for GPUs."""

from __future__ import annotations

import os

import torch

__all__ = ["available_memory", "format_bytes"]


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device`` (host RAM for ``"cpu"``, free memory of a CUDA device);
    ``None`` when it cannot be told."""
    device = torch.device(device)
    if device.type == "cpu":
        return _host_available()
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    return None


def format_bytes(size: float) -> str:
    """``1.5 GiB``, ``42.2 MiB``, ``812 B``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return f"{int(size)} B"
