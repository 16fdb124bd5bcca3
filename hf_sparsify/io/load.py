"""Strict loading of checkpoints, and :class:`SparseCheckpointError`, which it raises.

Every place hf_sparsify loads weights (its loaders, the CLI, the trainer's resume) goes through
:func:`from_pretrained_strict`: transformers' ``from_pretrained`` with ``output_loading_info=True``, then a missing,
unexpected or mis-shaped tensor is an error, never a silently re-initialised layer. Optional files of a folder or a
Hub repo are found with transformers' ``cached_file`` (:func:`optional_file`).

```python
>>> from transformers import ViTForImageClassification
>>> from hf_sparsify.io.load import from_pretrained_strict
>>> model.save_pretrained(tmp_dir)
>>> type(from_pretrained_strict(ViTForImageClassification, tmp_dir)).__name__
'ViTForImageClassification'
```
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import HfSparsifyError
from ..utils import get_logger

__all__ = ["HUB_KWARGS", "SparseCheckpointError", "check_loading_info", "from_pretrained_strict", "optional_file"]

logger = get_logger(__name__)

# from_pretrained keyword arguments that say where and how files are fetched (also used for optional files)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys")


class SparseCheckpointError(HfSparsifyError, RuntimeError):
    """A checkpoint does not match its model: missing, unexpected or mis-shaped tensors, or a damaged file."""


def optional_file(source: str | os.PathLike, filename: str, hub_kwargs: dict[str, Any] | None = None) -> str | None:
    """The path of ``filename`` in a local folder or a Hub repo (downloaded to the cache), or ``None`` when it is
    absent or cannot be fetched (transformers' ``cached_file`` without its missing-file errors)."""
    from transformers.utils import cached_file

    kwargs = {k: v for k, v in (hub_kwargs or {}).items() if k in HUB_KWARGS and k != "proxies"}
    try:
        return cached_file(
            str(source),
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            _raise_exceptions_for_gated_repo=False,
            **kwargs,
        )
    except OSError:  # an unknown repo or revision: the optional file is not there either
        return None


def _short(keys) -> str:
    keys = sorted(str(k) for k in keys)
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _keys_of(model_class, config) -> set[str]:
    """The state-dict keys of ``model_class(config)``, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return set(model_class(config).state_dict())


def _architecture_keys(model, config) -> set[str] | None:
    """When ``model``'s class differs from the architecture the checkpoint was saved from (a backbone loaded from a
    classifier checkpoint, or the reverse), the saved architecture's keys named as ``model`` names them; else None."""
    import transformers

    saved = [getattr(transformers, a, None) for a in (getattr(config, "architectures", None) or [])]
    saved = [c for c in saved if isinstance(c, type)]
    if not saved or any(isinstance(model, c) for c in saved):
        return None
    try:
        keys = _keys_of(saved[0], config)
    except Exception:  # noqa: BLE001 - an architecture that cannot be built here: no tolerance
        return None
    prefix = getattr(model, "base_model_prefix", "")
    saved_is_base = not any(k.startswith(prefix + ".") for k in keys) if prefix else True
    model_is_base = prefix and not hasattr(model, prefix)
    if prefix and model_is_base and not saved_is_base:  # backbone from a checkpoint with a head
        return {k[len(prefix) + 1:] for k in keys if k.startswith(prefix + ".")}
    if prefix and not model_is_base and saved_is_base:  # a head on a backbone checkpoint
        return {f"{prefix}.{k}" for k in keys}
    return keys


def check_loading_info(model, info: dict[str, Any], source: str | os.PathLike, config=None) -> None:
    """Raise :class:`SparseCheckpointError` when transformers' loading info reports missing, unexpected or
    mis-shaped tensors.

    Loading a model class other than the checkpoint's saved architecture is the one tolerated difference: the
    tensors only one of the two architectures has (a classifier head left out of a backbone, a backbone's pooler
    or a new head) are reported by transformers' warning, as a plain ``from_pretrained`` does."""
    problems = {k: set(info.get(k) or ()) for k in _PROBLEMS}
    problems["mismatched_keys"] = {k[0] if isinstance(k, (tuple, list)) else k for k in problems["mismatched_keys"]}
    known = _architecture_keys(model, config) if config is not None and (problems["missing_keys"] or problems["unexpected_keys"]) else None
    if known is not None:
        new = {k for k in problems["missing_keys"] if k not in known}
        if new:
            logger.warning(f"hf_sparsify: {type(model).__name__} has tensors the saved architecture lacks; they are newly initialised: {_short(new)}.")
        problems["missing_keys"] -= new
        problems["unexpected_keys"] = set()  # weights of the saved architecture this class has no place for
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        details = "; ".join(f"{k.replace('_', ' ')}: {_short(v)}" for k, v in problems.items())
        raise SparseCheckpointError(
            f"{source} does not match the model it describes ({details}). The weights file and config.json come from "
            "different models, or the file is damaged: save or download the model again."
        )


def from_pretrained_strict(model_class, source: str | os.PathLike | None, *model_args, **kwargs):
    """``model_class.from_pretrained(source, ...)`` that fails on any missing, unexpected or mis-shaped tensor and
    on a truncated weights file, with :class:`SparseCheckpointError`.

    ``output_loading_info=True`` returns ``(model, info)`` as transformers does. ``ignore_mismatched_sizes=True``
    is refused: it would re-initialise the tensors that do not fit."""
    if kwargs.get("ignore_mismatched_sizes"):
        raise SparseCheckpointError("ignore_mismatched_sizes=True would re-initialise weights that do not fit; hf_sparsify loads checkpoints exactly.")
    want_info = kwargs.pop("output_loading_info", False)
    try:
        model, info = model_class.from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
    except SafetensorError as err:
        raise SparseCheckpointError(
            f"a weights file of {source} is truncated or damaged ({err}). Download it again (force_download=True) or save the model again."
        ) from None
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err) and "size mismatch" not in str(err):
            raise
        raise SparseCheckpointError(
            f"{source} holds tensors of other shapes than the model its config.json describes (mismatched sizes; transformers' "
            "load report above names them). The weights file and config.json come from different models, or the file is damaged."
        ) from None
    check_loading_info(model, info, source if source is not None else "the given state dict", config=kwargs.get("config") or model.config)
    return (model, info) if want_info else model
