"""Output folders that lose nothing: the rules ``hf-sparsify prune`` and ``hf-sparsify demo`` write by.

* **Refused destinations**: the current folder (``--output .``) and its parents, the input model's folder and its
  parents, a file, and a folder holding anything hf-sparsify did not write there (a user's files are never
  replaced, moved or deleted, with or without ``--overwrite``).
* **Own outputs**: every folder written here carries a hidden manifest (:data:`MANIFEST_NAME`) naming the files
  it wrote and the command that wrote them. An earlier output is replaced only with ``overwrite`` (or, for the
  demo, when the same command wrote it).
* **One unit**: the new files are written into a hidden staging folder beside the output and swapped in by two
  renames only when complete; a failure leaves the previous output as it was.
* **One writer**: the output is locked (a hidden ``.<name>.hf_sparsify.lock`` file beside it, removed on release)
  from the start of a run to its end, so a second run to the same output fails at once, before any work.
* **No leftovers**: staging and swap folders carry a marker; a run that holds the lock removes those an earlier,
  killed run left behind (and puts back a previous output that a kill caught half-swapped).

```python
>>> import os
>>> from hf_sparsify.io.output import OutputFolder
>>> with OutputFolder(os.path.join(tmp_dir, "pruned"), command="prune") as output:   # checks and locks
...     written = output.write(lambda folder: (folder / "weights.bin").write_bytes(b"..."))
>>> sorted(p.name for p in written.iterdir())
['.hf_sparsify_output.json', 'weights.bin']
```
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import HfSparsifyError

__all__ = ["MANIFEST_NAME", "OutputFolder", "OutputFolderError", "read_manifest"]

#: the hidden file naming what hf-sparsify wrote into an output folder (and which command wrote it)
MANIFEST_NAME = ".hf_sparsify_output.json"
#: the marker inside the hidden staging and swap folders, by which a later run recognises and removes them
_WORK_MARKER = ".hf_sparsify_work"
_STAGING = "staging"
_PREVIOUS = "previous"


class OutputFolderError(HfSparsifyError, ValueError):
    """An output folder is refused (it holds other files, is the input or the current folder) or is locked by
    another run. The message names the folder and what to do."""


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of a folder hf-sparsify wrote (``{"command": ..., "files": [...]}``), or ``None``."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return data


def _names(paths: Iterable[str], limit: int = 4) -> str:
    paths = sorted(paths)
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _is_within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or inside it."""
    return path == folder or folder in path.parents


class OutputFolder:
    """The output folder of one run: checked and locked on entering, written once with :meth:`write`.

    Args:
        path: the output folder.
        command: the command writing it (recorded in the manifest, e.g. ``"prune"``, ``"demo"``).
        overwrite: replace an earlier output of hf-sparsify in ``path``. Files hf-sparsify did not write are
            never replaced: such a folder is refused either way.
        replace_own_output: also replace, without ``overwrite``, an earlier output of the same ``command``
            (the demo re-runs into its default folder).
        protect: folders that must not be written over: the input model's folder (and its parents are refused too).
        option: how the user named the folder, for messages (``"--output"``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        command: str,
        overwrite: bool = False,
        replace_own_output: bool = False,
        protect: Iterable[str | os.PathLike] = (),
        option: str = "--output",
    ):
        self.given = str(path)
        self.path = Path(path).expanduser().resolve()
        self.command = command
        self.overwrite = overwrite
        self.replace_own_output = replace_own_output
        self.protect = [Path(p).expanduser().resolve() for p in protect if Path(p).expanduser().exists()]
        self.option = option
        #: what entering did besides checking (stale folders removed, a previous output restored), for the user
        self.notes: list[str] = []
        self.written = False
        self._lock = None
        self._created: list[Path] = []

    # ------------------------------------------------------------------------------------------ checks
    def check(self) -> None:
        """Refuse the destination if writing there could lose anything (see the module docstring)."""
        path, named = self.path, f"{self.option} {self.given}"
        if path.exists() and not path.is_dir():
            raise OutputFolderError(f"{named} is a file, not a folder: choose a folder name (it is created).")
        cwd = Path.cwd().resolve()
        if _is_within(cwd, path):
            raise OutputFolderError(
                f"{named} is the current folder{'' if path == cwd else ' or one of its parents'}: the output is a folder of "
                f"its own, replaced as a whole. Choose a new folder, e.g. {self.option} ./pruned."
            )
        for source in self.protect:
            if _is_within(source, path):
                raise OutputFolderError(
                    f"{named} {'is' if path == source else 'holds'} the input model {source}: writing there would replace it. "
                    "Choose another folder."
                )
        if path.is_dir():
            self._check_contents()

    def _check_contents(self) -> None:
        entries = {entry.name for entry in self.path.iterdir()}
        if not entries:
            return
        manifest = read_manifest(self.path)
        own = set(manifest["files"]) | {MANIFEST_NAME} if manifest else set()
        foreign = entries - own
        named = f"{self.option} {self.given}"
        if foreign:
            raise OutputFolderError(
                f"{named} holds files hf-sparsify did not write ({_names(foreign)}); they are never replaced, with or "
                "without --overwrite. Choose a new or empty folder, or move them away."
            )
        if self.overwrite or (self.replace_own_output and manifest.get("command") == self.command):
            return
        raise OutputFolderError(
            f"{named} already holds the output of an earlier `hf-sparsify {manifest.get('command', '?')}`; pass --overwrite "
            "to replace it, or choose another folder."
        )

    # ------------------------------------------------------------------------------------------ lock
    @property
    def lock_path(self) -> Path:
        return self.path.parent / f".{self.path.name}.hf_sparsify.lock"

    def __enter__(self) -> "OutputFolder":
        from filelock import FileLock, Timeout

        self.check()
        missing = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first: removed again if nothing is written
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            self._remove_created()
            raise OutputFolderError(
                f"another hf-sparsify run is writing {self.option} {self.given} (it holds {self.lock_path}); wait for it "
                "to finish, or choose another folder."
            ) from None
        self._lock = lock
        try:
            self._clean_stale()
            self.check()  # again, now that no other run can change the folder
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            # Unlink while holding the lock: a run that opened the old file sees it unlinked and does not take it.
            self.lock_path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None
        if not self.written:
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break

    # ------------------------------------------------------------------------------------------ staging
    def _work_prefix(self, kind: str) -> str:
        return f".{self.path.name}.hf_sparsify-{kind}-"

    def _new_work_folder(self, kind: str) -> Path:
        root = Path(tempfile.mkdtemp(prefix=self._work_prefix(kind), dir=self.path.parent))
        (root / _WORK_MARKER).write_text(json.dumps({"pid": os.getpid(), "started": time.time(), "output": str(self.path)}) + "\n")
        return root

    def _clean_stale(self) -> None:
        """Remove the staging and swap folders of earlier runs to this output (killed before they cleaned up);
        called with the lock held, so none of them belongs to a live run."""
        for kind in (_PREVIOUS, _STAGING):
            for root in sorted(self.path.parent.glob(self._work_prefix(kind) + "*")):
                if not (root / _WORK_MARKER).is_file():
                    continue  # not ours: leave it
                previous = root / self.path.name
                if kind == _PREVIOUS and previous.is_dir() and not self.path.exists():
                    previous.rename(self.path)
                    self.notes.append(f"restored {self.path} from {root} (an earlier run was stopped while swapping it)")
                size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
                shutil.rmtree(root, ignore_errors=True)
                self.notes.append(f"removed {root} ({size / 2**20:.1f} MiB) left by an interrupted run")

    def write(self, save: Callable[[Path], None]) -> Path:
        """Run ``save(folder)`` on a fresh staging folder that has the output's own name, add the manifest, and
        swap it in for the output. Returns the output path."""
        if self._lock is None:
            raise RuntimeError("OutputFolder.write() is called inside `with OutputFolder(...) as output:`")
        root = self._new_work_folder(_STAGING)
        staging = root / self.path.name  # what save() writes that names its folder (the card's snippet) names the output
        staging.mkdir()
        try:
            save(staging)
            files = sorted(entry.name for entry in staging.iterdir() if entry.name != MANIFEST_NAME)
            manifest = {"command": self.command, "files": files, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            if self.path.exists():
                self._check_contents()  # nothing foreign appeared while the run worked
                swap = self._new_work_folder(_PREVIOUS)
                self.path.rename(swap / self.path.name)
                try:
                    staging.rename(self.path)
                except BaseException:
                    (swap / self.path.name).rename(self.path)
                    raise
                shutil.rmtree(swap, ignore_errors=True)
            else:
                staging.rename(self.path)
            self.written = True
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return self.path
