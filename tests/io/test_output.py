"""Output folders lose nothing (hf_sparsify/io/output.py): refused destinations, own outputs replaced only when
asked, one writer at a time, and no leftovers after a run is interrupted (real subprocesses, real signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hf_sparsify.io.output import MANIFEST_NAME, OutputFolder, OutputFolderError, read_manifest


def _write(path, files: dict[str, bytes], **kwargs) -> Path:
    with OutputFolder(path, command=kwargs.pop("command", "prune"), **kwargs) as output:
        return output.write(lambda folder: [(folder / name).write_bytes(data) for name, data in files.items()])


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_an_output_carries_a_manifest_and_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    _write(out, {"model.safetensors": b"1", "config.json": b"{}"})
    assert read_manifest(out)["files"] == ["config.json", "model.safetensors"] and read_manifest(out)["command"] == "prune"
    with pytest.raises(OutputFolderError, match="already holds the output of an earlier `hf-sparsify prune`; pass --overwrite"):
        _write(out, {"model.safetensors": b"2"})
    assert (out / "model.safetensors").read_bytes() == b"1"
    _write(out, {"model.safetensors": b"2"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "model.safetensors"]  # the old config.json was ours
    assert (out / "model.safetensors").read_bytes() == b"2"
    assert _leftovers(tmp_path) == []  # no staging folder, no lock file


def test_files_it_did_not_write_are_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match=r"holds files hf-sparsify did not write \(notes.txt\)"):
            _write(mine, {"model.safetensors": b"1"}, overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # an earlier output to which the user added a file
    out = tmp_path / "out"
    _write(out, {"model.safetensors": b"1"})
    (out / "eval.json").write_text("{}")
    with pytest.raises(OutputFolderError, match=r"did not write \(eval.json\)"):
        _write(out, {"model.safetensors": b"2"}, overwrite=True)
    assert (out / "eval.json").exists() and (out / "model.safetensors").read_bytes() == b"1"


def test_the_current_folder_its_parents_and_the_input_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "model").mkdir(parents=True)
    (work / "model" / "config.json").write_text("{}")
    (work / "data.txt").write_text("keep me")
    monkeypatch.chdir(work)
    for path in (".", "..", str(work)):
        with pytest.raises(OutputFolderError, match="current folder"):
            _write(path, {"x": b"1"}, overwrite=True)
    with pytest.raises(OutputFolderError, match="is the input model"):
        _write("model", {"x": b"1"}, overwrite=True, protect=["model"])
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "input").mkdir(parents=True)
    with pytest.raises(OutputFolderError, match="holds the input model"):
        _write(elsewhere, {"x": b"1"}, overwrite=True, protect=[elsewhere / "input"])
    (tmp_path / "file").write_text("a file")
    with pytest.raises(OutputFolderError, match="is a file"):
        _write(tmp_path / "file", {"x": b"1"})
    assert (work / "data.txt").read_text() == "keep me" and (work / "model" / "config.json").exists()


def test_the_demo_replaces_its_own_output_but_not_another_commands(tmp_path):
    out = tmp_path / "demo"
    _write(out, {"a": b"1"}, command="demo", replace_own_output=True)
    _write(out, {"a": b"2"}, command="demo", replace_own_output=True)
    assert (out / "a").read_bytes() == b"2"
    pruned = tmp_path / "pruned"
    _write(pruned, {"a": b"1"})
    with pytest.raises(OutputFolderError, match="earlier `hf-sparsify prune`"):
        _write(pruned, {"a": b"2"}, command="demo", replace_own_output=True)


def test_a_failed_save_keeps_the_previous_output_and_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "out"
    _write(out, {"model.safetensors": b"old"})

    def broken(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        with OutputFolder(out, command="prune", overwrite=True) as output:
            output.write(broken)
    assert (out / "model.safetensors").read_bytes() == b"old" and _leftovers(out.parent) == []
    # parents created for an output that was never written are removed again
    with OutputFolder(tmp_path / "new" / "deep" / "out", command="prune"):
        assert (tmp_path / "new" / "deep").is_dir()
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------------------------- processes
_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hf_sparsify.io.output import OutputFolder

    def save(folder):
        (folder / "model.safetensors").write_bytes(b"x" * 2**20)
        print("saving", flush=True)
        time.sleep(120)

    with OutputFolder(sys.argv[1], command="prune", overwrite=True) as output:
        print("locked", flush=True)
        if sys.argv[2] == "save":
            output.write(save)
        else:
            time.sleep(120)
    """
)


def _start(tmp_path, out, mode: str, wait_for: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    process = subprocess.Popen([sys.executable, str(script), str(out), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    while line and line != wait_for:
        line = process.stdout.readline().strip()
    assert line == wait_for, process.stderr.read()
    return process


def test_a_second_writer_fails_at_once_while_the_first_holds_the_output(tmp_path):
    out = tmp_path / "out"
    first = _start(tmp_path, out, "hold", "locked")
    try:
        with pytest.raises(OutputFolderError, match="another hf-sparsify run is writing"):
            with OutputFolder(out, command="prune", overwrite=True):
                pass
    finally:
        first.kill()
        first.wait()
    with OutputFolder(out, command="prune", overwrite=True):  # a killed holder's lock is free again
        pass


def test_staging_left_by_a_killed_run_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    _write(out, {"model.safetensors": b"previous"})
    process = _start(tmp_path, out, "save", "saving")
    process.send_signal(signal.SIGKILL)
    process.wait()
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.hf_sparsify-staging-")]
    assert len(staging) == 1 and (staging[0] / "out" / "model.safetensors").stat().st_size == 2**20
    assert (out / "model.safetensors").read_bytes() == b"previous"
    (tmp_path / ".out.unrelated").mkdir()  # a hidden folder without the marker is not ours: kept
    with OutputFolder(out, command="prune", overwrite=True) as output:
        assert any("removed" in note and "interrupted run" in note for note in output.notes), output.notes
        assert not staging[0].exists()
    assert (tmp_path / ".out.unrelated").is_dir() and (out / "model.safetensors").read_bytes() == b"previous"


def test_an_interrupted_run_cleans_up_after_itself(tmp_path):
    out = tmp_path / "out"
    _write(out, {"model.safetensors": b"previous"})
    process = _start(tmp_path, out, "save", "saving")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "KeyboardInterrupt" in err
    assert _leftovers(tmp_path) == []  # staging removed, lock released and unlinked
    assert (out / "model.safetensors").read_bytes() == b"previous"


def test_an_output_caught_half_swapped_is_put_back(tmp_path):
    out = tmp_path / "out"
    _write(out, {"model.safetensors": b"previous"})
    # The state a kill between the two renames of a swap leaves: the output moved into a marked swap folder.
    swap = tmp_path / ".out.hf_sparsify-previous-x"
    swap.mkdir()
    (swap / ".hf_sparsify_work").write_text(json.dumps({"pid": 1}))
    out.rename(swap / "out")
    with OutputFolder(out, command="prune", overwrite=True) as output:
        assert any(note.startswith("restored") for note in output.notes)
    assert (out / "model.safetensors").read_bytes() == b"previous" and not swap.exists()
