"""Writing a pruned model's files, and replacing a folder's files as one unit.

:func:`write_model_files` writes, into an empty folder, besides transformers' safetensors weights and
``config.json``:

* ``pruning_config.json``: the method's configuration (reloads with ``PruningConfig.from_pretrained(dir)``);
* ``sparsity_summary.json``: the saved record (see :mod:`hf_sparsify.io.summary`);
* for structurally pruned models, the shape records in ``config.json`` (see :mod:`hf_sparsify.surgery.shapes`);
* with ``compressed=True``, ``model.compressed.safetensors`` instead of ``model.safetensors`` (see
  :mod:`hf_sparsify.io.compressed`);
* the base model's ``LICENSE`` file, when it was loaded from a local folder that has one.

:class:`StagedFolder` is how a save reaches its folder: the new files are written into a hidden staging folder
inside it, then swapped in (each file renamed over the previous one, and the previous version's weight files
removed); an error before or during the swap leaves the folder as it was. The public
``model.save_pretrained`` (:func:`hf_sparsify.save_pretrained`) adds the model card and lives in
:mod:`hf_sparsify.pruned`, above this package and :mod:`hf_sparsify.hub`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from ..errors import HfSparsifyError
from ..surgery.shapes import METADATA_KEY, is_structured, record_shapes
from ..utils import get_logger
from .compressed import COMPRESSED_WEIGHTS_NAME, compress_checkpoint, compression_settings
from .summary import LICENSE_FILES, card_section, summary_dict, write_summary

__all__ = ["SaveArgumentError", "StagedFolder", "is_weights_file", "write_model_files"]

logger = get_logger(__name__)

STAGING_PREFIX = ".hf_sparsify-save-"
BACKUP_PREFIX = ".hf_sparsify-old-"


class SaveArgumentError(HfSparsifyError, ValueError):
    """An argument of ``save_pretrained``/``push_to_hub`` that hf_sparsify cannot honour (e.g. pickled weights)."""


def _weights_patterns() -> list[re.Pattern]:
    from huggingface_hub.constants import FLAX_WEIGHTS_NAME, TF2_WEIGHTS_NAME, TF_WEIGHTS_NAME
    from transformers.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

    patterns = [re.compile(re.escape(name)) for name in (TF2_WEIGHTS_NAME, TF_WEIGHTS_NAME, FLAX_WEIGHTS_NAME, COMPRESSED_WEIGHTS_NAME)]
    for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):  # model.safetensors, pytorch_model.bin
        stem, ext = os.path.splitext(name)
        # a variant (model.fp16.safetensors), shards (model-00001-of-00002.safetensors), the shard index
        patterns.append(re.compile(rf"{re.escape(stem)}(\.[\w-]+)?(-\d{{5}}-of-\d{{5}})?{re.escape(ext)}(\.index\.json)?"))
    return patterns


def is_weights_file(name: str) -> bool:
    """Whether a file name (a top-level path of a model folder or repo) holds model weights: ``model.safetensors``,
    shards and their index, variants, ``model.compressed.safetensors``, ``pytorch_model.bin``, TF and Flax files.

    ```python
    >>> from hf_sparsify.io.save import is_weights_file
    >>> [is_weights_file(n) for n in ("model-00001-of-00002.safetensors", "pytorch_model.bin", "config.json")]
    [True, True, False]
    ```
    """
    return "/" not in name and any(p.fullmatch(name) for p in _weights_patterns())


# --------------------------------------------------------------------------------------------- the files
def _original_save(model: nn.Module):
    return type(model).save_pretrained.__get__(model)


def _write_per_layer_config(directory: Path, meta: dict[str, Any]) -> None:
    """Put the transformers-native ``per_layer_config`` into the saved config.json: plain transformers then
    refuses the checkpoint (AmbiguousGlobalPerLayerAttributeError) instead of re-initialising weights."""
    from transformers.utils import CONFIG_NAME

    per_layer = meta.get("per_layer_config")
    if not per_layer:
        return
    path = directory / CONFIG_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data["per_layer_config"] = per_layer
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _remember_base_model(model: nn.Module) -> None:
    """Record the name the model was loaded from (before pruning) as its base model, once."""
    meta = getattr(model.config, METADATA_KEY, None)
    if not isinstance(meta, dict) or not meta or "base_model" in meta:
        return
    name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if name:
        meta["base_model"] = str(name)


def _copy_license(directory: Path, base_model: str | None, skip: Iterable[str] = ()) -> None:
    """A local base model's LICENSE file travels with the derived model (MIT and Apache ask for the notice)."""
    if not base_model or not Path(base_model).is_dir():
        return
    for name in LICENSE_FILES:
        source = Path(base_model) / name
        if source.is_file() and name not in skip and not (directory / name).exists():
            shutil.copyfile(source, directory / name)


def check_save_arguments(kwargs: dict[str, Any]) -> None:
    """Refuse the ``save_pretrained`` arguments hf_sparsify cannot honour, before anything is written."""
    if kwargs.pop("safe_serialization", True) is False:
        raise SaveArgumentError("hf_sparsify saves safetensors only (loading never unpickles): drop safe_serialization=False.")
    if kwargs.get("push_to_hub"):
        raise SaveArgumentError("use model.push_to_hub(repo_id) or hf_sparsify.push_to_hub(model, repo_id) to upload a pruned model.")


def write_model_files(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    compressed: bool | str = False,
    card_metadata: dict[str, Any] | None = None,
    keep_license: Iterable[str] = (),
    **kwargs,
) -> None:
    """Write a pruned model's files (everything but the model card) into ``directory``, an empty folder.

    Every argument and the card data are checked before the first file is written.

    Args:
        compressed: see :func:`hf_sparsify.save_pretrained`.
        card_metadata: card metadata stored in ``sparsity_summary.json`` (see :func:`hf_sparsify.io.summary.card_section`).
        keep_license: licence file names the destination already holds (the base model's is then not copied).
        **kwargs: go to transformers' ``save_pretrained`` (``max_shard_size``, ``state_dict``...).
    """
    from ..configuration import PruningConfig

    directory = Path(directory)
    check_save_arguments(kwargs)
    config: PruningConfig | None = getattr(model, "pruning_config", None)
    compression = compression_settings(config, compressed)
    if is_structured(model.config) or getattr(model, "pruning_structured", False):
        record_shapes(model)
    _remember_base_model(model)
    section = card_section(model, card_metadata)
    summary = summary_dict(model)
    if section:
        summary["card"] = section
    meta = getattr(model.config, METADATA_KEY, None)
    if isinstance(meta, dict):
        meta.pop("compression", None)
        if compression:
            meta["compression"] = compression
    try:
        _original_save(model)(str(directory), **kwargs)
    finally:
        if isinstance(meta, dict):
            meta.pop("compression", None)
    meta = getattr(model.config, METADATA_KEY, None) or {}
    _write_per_layer_config(directory, meta)
    if compression:
        nm = tuple(compression["nm"]) if compression.get("nm") else None
        compress_checkpoint(directory, compression["encoding"], nm)
    if config is not None:
        config.save_pretrained(directory)
    write_summary(directory, summary)
    _copy_license(directory, meta.get("base_model"), skip=keep_license)


# --------------------------------------------------------------------------------------------- one unit
def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: never judge another process dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale(directory: Path) -> None:
    """Remove the staging and backup folders that an interrupted save (a process that no longer runs) left."""
    for entry in directory.iterdir():
        for prefix in (STAGING_PREFIX, BACKUP_PREFIX):
            if entry.is_dir() and entry.name.startswith(prefix):
                pid = entry.name[len(prefix):].split("-")[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    logger.info(f"hf_sparsify: removing {entry}, left by an interrupted save.")
                    shutil.rmtree(entry, ignore_errors=True)


class StagedFolder:
    """Write a folder's new files as one unit: stage them, then swap them in.

    ``with StagedFolder(dir) as staged:`` yields an object whose ``path`` is an empty hidden folder inside ``dir``
    (created if needed). Write the new files there. When the block ends without an error, every staged file
    replaces the file of the same name in ``dir`` (by renames), and the previous version's weight files that the new
    set does not have (see :func:`is_weights_file`) are removed, with any name passed to :meth:`remove`; other files
    of ``dir`` are kept. If the block or the swap fails, ``dir`` is left as it was (the swap is undone) and a folder
    the save created is removed again. Staging folders of interrupted runs are removed by the next save.

    ```python
    >>> from hf_sparsify.io.save import StagedFolder
    >>> with StagedFolder(tmp_dir) as staged:
    ...     _ = (staged.path / "config.json").write_text("{}")
    >>> sorted(p.name for p in tmp_dir.iterdir())
    ['config.json']
    ```
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path: Path | None = None
        self._created = False
        self._remove: set[str] = set()

    def __enter__(self) -> "StagedFolder":
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"{self.directory} is a file; save_pretrained expects a directory.")
        self._created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.directory)
        self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.directory))
        return self

    def remove(self, *names: str) -> None:
        """Also remove these files of the folder when the new files are swapped in (unless staged anew)."""
        self._remove.update(names)

    def existing_files(self) -> set[str]:
        """The names of the folder's files (hidden ones excepted) before the swap."""
        return {p.name for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")}

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.path is not None
        try:
            if exc_type is None:
                self._swap()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
            if self._created and exc_type is not None:
                try:
                    self.directory.rmdir()  # only when empty: nothing but what this save wrote is ever removed
                except OSError:
                    pass

    def _swap(self) -> None:
        assert self.path is not None
        new = sorted(p.name for p in self.path.iterdir())
        old = sorted(
            n for n in os.listdir(self.directory)
            if (self.directory / n).is_file() and (n in new or n in self._remove or is_weights_file(n))
        )
        backup = Path(tempfile.mkdtemp(prefix=f"{BACKUP_PREFIX}{os.getpid()}-", dir=self.directory)) if old else None
        moved_old: list[str] = []
        moved_new: list[str] = []
        restored = False  # the backup is dropped only once the folder holds a complete set again
        try:
            for name in old:
                os.replace(self.directory / name, backup / name)
                moved_old.append(name)
            for name in new:
                os.replace(self.path / name, self.directory / name)
                moved_new.append(name)
            restored = True
        except BaseException:
            for name in reversed(moved_new):
                os.replace(self.directory / name, self.path / name)
            for name in reversed(moved_old):
                os.replace(backup / name, self.directory / name)
            restored = True
            raise
        finally:
            if backup is not None and restored:
                shutil.rmtree(backup, ignore_errors=True)
