"""`hf-sparsify prune --push-to-hub` and `hf-sparsify card`, run in a subprocess as a user runs them, against the
local Hub server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

from hf_sparsify.assets import DEMO_MODEL_DIR
from hf_sparsify.cli import main
from hf_sparsify.hub import CARD_NAME, CHART_NAME
from tests.io.models import unstructured_model


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hf_sparsify.cli", *map(str, args)], capture_output=True, text=True, env=env or dict(os.environ), timeout=300)


def test_prune_push_to_hub_uploads_the_output_in_one_commit(hub, repo_name, tmp_path):
    out = tmp_path / "pruned"
    result = run("prune", DEMO_MODEL_DIR, "--method", "magnitude", "--sparsity", "0.5", "--output", out, "--push-to-hub", repo_name, "--private", "--disable-tqdm")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    repo_id = f"tester/{repo_name}"
    assert line["commit_url"].startswith(f"{hub.url}/{repo_id}/commit/")
    repo = hub.repos[repo_id]
    assert repo.private and len(repo.commits) == 2
    files = hub.files(repo_id)
    for name in ("model.safetensors", "config.json", "pruning_config.json", "sparsity_summary.json", "preprocessor_config.json", CHART_NAME, "LICENSE"):
        assert files[name] == (out / name).read_bytes(), name
    card = ModelCard.load(repo_id)
    assert f'from_pretrained("{repo_id}")' in card.text and f'AutoImageProcessor.from_pretrained("{repo_id}")' in card.text
    assert card.data.license == "mit"
    # the local card names the folder; the uploaded one the repo
    assert 'from_pretrained("pruned")' in (out / CARD_NAME).read_text()
    reloaded = AutoModelForImageClassification.from_pretrained(repo_id)
    local = AutoModelForImageClassification.from_pretrained(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=x).logits, local(pixel_values=x).logits)


# The error paths run in-process through the same entry point (main), to keep the suite fast.
def test_prune_push_without_a_token_fails_before_pruning(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    code = main(["prune", str(DEMO_MODEL_DIR), "--method", "magnitude", "--sparsity", "0.5", "--output", str(tmp_path / "out"), "--push-to-hub", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --push-to-hub x: No Hugging Face token found") and "nothing was pruned" in err, err
    assert not (tmp_path / "out").exists()


def test_prune_push_server_error_keeps_the_local_output(hub, repo_name, tmp_path, capsys):
    hub.fail("commit", status=503, message="Service Unavailable (injected)")
    out = tmp_path / "pruned"
    code = main(["prune", str(DEMO_MODEL_DIR), "--method", "magnitude", "--sparsity", "0.5", "--output", str(out), "--push-to-hub", repo_name, "--compressed", "--disable-tqdm"])
    err = capsys.readouterr().err
    assert code == 2 and "error: upload of" in err and "503" in err and "no local file was changed" in err, err
    assert f"retry with `hf-sparsify push {out} {repo_name}`" in err
    assert (out / "model.compressed.safetensors").exists() and (out / CARD_NAME).exists()
    assert len(hub.repos[f"tester/{repo_name}"].commits) == 1


def test_card_command_rewrites_the_card_with_metrics(tmp_path, capsys):
    out = tmp_path / "pruned"
    unstructured_model().save_pretrained(out)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"dataset": "CIFAR-10", "dataset_id": "cifar10", "split": "test", "before": {"accuracy": 0.72}, "after": {"accuracy": 0.7}}))
    result = run("card", out, "--repo-id", "me/vit-40", "--metrics", metrics)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / CARD_NAME)
    card = ModelCard.load(out / CARD_NAME)
    assert 'from_pretrained("me/vit-40")' in card.text and {r.metric_value for r in card.data.eval_results} == {0.72, 0.7}
    assert json.loads((out / "sparsity_summary.json").read_text())["card"]["metrics"]["after"] == {"accuracy": 0.7}

    (out / CARD_NAME).write_text("# mine\n")
    assert main(["card", str(out)]) == 2 and "pass --force" in capsys.readouterr().err
    assert (out / CARD_NAME).read_text() == "# mine\n"
    assert main(["card", str(out), "--force"]) == 0 and "hf_sparsify" in (out / CARD_NAME).read_text()

    metrics.write_text(json.dumps({"after": {"accuracy": "good"}}))
    assert main(["card", str(out), "--metrics", str(metrics)]) == 2 and "finite number" in capsys.readouterr().err
    template = tmp_path / "t.md"
    template.write_text("{{ nope }}")
    assert main(["card", str(out), "--template", str(template)]) == 2 and "does not provide" in capsys.readouterr().err
    assert main(["card", str(tmp_path / "missing")]) == 2 and "is not a folder" in capsys.readouterr().err


def test_push_command_uploads_a_saved_folder(hub, repo_name, tmp_path, capsys):
    """`hf-sparsify push DIR REPO` retries a failed --push-to-hub without pruning again."""
    out = tmp_path / "pruned"
    assert main(["prune", str(DEMO_MODEL_DIR), "--method", "magnitude", "--sparsity", "0.5", "--output", str(out), "--disable-tqdm"]) == 0
    capsys.readouterr()
    assert main(["push", str(out), repo_name, "--private", "--commit-message", "retry"]) == 0
    line = json.loads(capsys.readouterr().out)
    repo_id = f"tester/{repo_name}"
    assert line["commit_url"].startswith(f"{hub.url}/{repo_id}/commit/") and hub.repos[repo_id].private
    files = hub.files(repo_id)
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes() and ".hf_sparsify_output.json" not in files
    assert f'from_pretrained("{repo_id}")' in files[CARD_NAME].decode()
    # the compact format, from the same folder (read, not changed)
    before = sorted(p.name for p in out.iterdir())
    assert main(["push", str(out), repo_name, "--compressed"]) == 0
    assert "model.compressed.safetensors" in hub.files(repo_id) and sorted(p.name for p in out.iterdir()) == before
    assert main(["push", str(tmp_path / "missing"), repo_name]) == 2 and "is not a folder" in capsys.readouterr().err


def test_prune_push_with_a_refused_token_fails_before_pruning(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_known_token")
    code = main(["prune", str(DEMO_MODEL_DIR), "--method", "magnitude", "--sparsity", "0.5", "--output", str(tmp_path / "out"), "--push-to-hub", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "token was refused" in err and hub.url in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and "hf-sparsify prune:" not in err  # nothing was loaded or pruned (no plan)


def test_prune_push_to_an_unreachable_hub_fails_before_pruning(hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code = main(["prune", str(DEMO_MODEL_DIR), "--method", "magnitude", "--sparsity", "0.5", "--output", str(tmp_path / "out"), "--push-to-hub", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "http://127.0.0.1:9" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and "hf-sparsify prune:" not in err
