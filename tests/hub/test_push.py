"""push_to_hub against a real local Hub server (tests/hub_server.py): round trips, one commit, the card on the
server, and failures half-way that leave local files intact."""

from __future__ import annotations

import hashlib

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from transformers import AutoImageProcessor, AutoModelForImageClassification

import hf_sparsify
from hf_sparsify.hub import CARD_NAME, CHART_NAME, HubPushError
from tests.conftest import tiny_pixel_values
from tests.io.models import structured_model, unstructured_model


def _logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def _tree_digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_unstructured_round_trip_with_plain_transformers(hub, repo_name):
    pruned = unstructured_model()
    pruned.pruning_metrics = {"dataset": "CIFAR-10", "dataset_id": "cifar10", "split": "test", "before": {"accuracy": 0.7}, "after": {"accuracy": 0.65}}
    url = hf_sparsify.push_to_hub(pruned, repo_name, commit_message="first upload")
    repo_id = f"tester/{repo_name}"
    assert url.startswith(f"{hub.url}/{repo_id}/commit/") and url.oid in url

    files = hub.files(repo_id)
    assert {"config.json", "model.safetensors", "pruning_config.json", "sparsity_summary.json", CARD_NAME, CHART_NAME} <= set(files)
    commits = hub.repos[repo_id].commits
    assert len(commits) == 2 and commits[-1].summary == "first upload"  # the repo's initial commit + ONE upload

    reloaded = AutoModelForImageClassification.from_pretrained(repo_id)
    x = tiny_pixel_values(pruned)
    assert torch.equal(_logits(reloaded, x), _logits(pruned, x))

    card = ModelCard.load(repo_id)
    card.validate()  # the server's validate-yaml endpoint
    assert card.data.library_name == "transformers" and "magnitude" in card.data.tags
    assert f'from_pretrained("{repo_id}")' in card.text
    assert {r.metric_value for r in card.data.eval_results} == {0.7, 0.65}
    info = HfApi().model_info(repo_id)
    assert info.pipeline_tag == "image-classification" and "hf-sparsify" in info.tags


def test_structured_round_trip_with_the_hf_sparsify_loader(hub, repo_name):
    model = structured_model()
    url = model.push_to_hub(repo_name)  # bound on pruned models
    repo_id = f"tester/{repo_name}"
    assert url.oid == hub.repos[repo_id].head.oid
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(repo_id)
    x = tiny_pixel_values(model)
    assert torch.equal(_logits(reloaded, x), _logits(model, x))
    assert reloaded.pruning_config.method == "vbp"
    card = ModelCard.load(repo_id)
    card.validate()
    assert card.data.library_name == "hf_sparsify"
    assert f'hf_sparsify.AutoSparseModelForImageClassification.from_pretrained("{repo_id}")' in card.text
    # plain transformers stops with an error rather than loading wrong weights
    with pytest.raises(Exception, match="(?i)per.?layer|size mismatch|ambiguous"):
        AutoModelForImageClassification.from_pretrained(repo_id)


def test_compressed_push_round_trip_and_processor(hub, repo_name, demo_model_dir):
    pruned = unstructured_model()
    processor = AutoImageProcessor.from_pretrained(demo_model_dir)
    hf_sparsify.push_to_hub(pruned, repo_name, compressed=True, image_processor=processor, private=True)
    repo_id = f"tester/{repo_name}"
    files = hub.files(repo_id)
    assert "model.compressed.safetensors" in files and "model.safetensors" not in files and "preprocessor_config.json" in files
    assert hub.repos[repo_id].private
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(repo_id)
    x = tiny_pixel_values(pruned)
    assert torch.equal(_logits(reloaded, x), _logits(pruned, x))
    card = ModelCard.load(repo_id)
    assert f'AutoImageProcessor.from_pretrained("{repo_id}")' in card.text
    with pytest.raises(OSError):
        AutoModelForImageClassification.from_pretrained(repo_id)


def test_push_a_saved_folder_regenerates_the_card_without_touching_the_folder(hub, repo_name, tmp_path):
    pruned = unstructured_model()
    pruned.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / ".hidden").write_text("not uploaded")
    before = _tree_digest(tmp_path / "saved")
    hf_sparsify.push_to_hub(tmp_path / "saved", repo_name)
    assert _tree_digest(tmp_path / "saved") == before
    repo_id = f"tester/{repo_name}"
    files = hub.files(repo_id)
    assert ".hidden" not in files and f'from_pretrained("{repo_id}")'.encode() in files[CARD_NAME]
    # pushing the same files again makes no empty commit (the server reports what it holds, as the Hub does)
    head = hub.repos[repo_id].head.oid
    again = hf_sparsify.push_to_hub(tmp_path / "saved", repo_id, commit_message="again")
    assert again.oid == head and hub.repos[repo_id].head.oid == head


def test_a_user_readme_is_uploaded_unchanged(hub, repo_name, tmp_path):
    unstructured_model().save_pretrained(tmp_path, card=False)
    (tmp_path / CARD_NAME).write_text("---\nlicense: mit\n---\n# Mine\n")
    hf_sparsify.push_to_hub(tmp_path, repo_name)
    assert hub.files(f"tester/{repo_name}")[CARD_NAME] == b"---\nlicense: mit\n---\n# Mine\n"


# --------------------------------------------------------------------------------------------- failures
def test_server_error_half_way_leaves_everything_intact(hub, repo_name, tmp_path):
    pruned = unstructured_model()
    pruned.save_pretrained(tmp_path)
    before = _tree_digest(tmp_path)
    hf_sparsify.push_to_hub(unstructured_model(seed=1), repo_name)  # other weights on the server
    repo_id = f"tester/{repo_name}"
    head = hub.repos[repo_id].head.oid

    hub.fail("commit", status=500)  # the repo exists and preupload succeeds; the commit fails
    with pytest.raises(HubPushError, match="500.*The commit was not made and no local file was changed"):
        hf_sparsify.push_to_hub(tmp_path, repo_id)
    assert hub.repos[repo_id].head.oid == head  # nothing half-committed
    assert _tree_digest(tmp_path) == before
    # and the same push succeeds once the server is well again
    hf_sparsify.push_to_hub(tmp_path, repo_id)
    assert hub.repos[repo_id].head.oid != head


def test_no_token_is_a_clear_error_before_any_request(hub, repo_name, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    requests = len(hub.requests)
    with pytest.raises(HubPushError, match="No Hugging Face token found.*hf auth login.*HF_TOKEN"):
        hf_sparsify.push_to_hub(unstructured_model(), repo_name)
    assert len(hub.requests) == requests and f"tester/{repo_name}" not in hub.repos


def test_a_refused_token_is_a_clear_error(hub, repo_name):
    with pytest.raises(HubPushError, match="token was refused"):
        hf_sparsify.push_to_hub(unstructured_model(), repo_name, token="hf_wrong")
    assert f"tester/{repo_name}" not in hub.repos


def test_invalid_card_metadata_is_refused_by_the_server(hub, repo_name):
    with pytest.raises(HubPushError, match="metadata"):
        hf_sparsify.push_to_hub(unstructured_model(), repo_name, card_metadata={"license": "not-a-licence"})
    assert len(hub.repos[f"tester/{repo_name}"].commits) == 1  # created, nothing committed


# --------------------------------------------------------------------------------------------- replacing a version
@pytest.mark.parametrize("first, second", [("dense", "compressed"), ("compressed", "dense"), ("sharded", "dense"), ("dense", "sharded")])
def test_a_push_replaces_every_weight_file_of_the_previous_version(first, second, hub, repo_name, tmp_path):
    """A compressed push onto a dense repo used to leave model.safetensors, which plain transformers then loaded."""
    def push(model, how, **kwargs):
        extra = {"compressed": True} if how == "compressed" else {"max_shard_size": "20KB"} if how == "sharded" else {}
        return hf_sparsify.push_to_hub(model, repo_name, **extra, **kwargs)

    push(unstructured_model(seed=0), first)
    repo_id = f"tester/{repo_name}"
    commits = len(hub.repos[repo_id].commits)
    model = unstructured_model(seed=1)
    push(model, second, commit_message="second version")
    assert len(hub.repos[repo_id].commits) == commits + 1  # one commit: the deletions travel with the upload
    files = set(hub.files(repo_id))
    weights = {f for f in files if f.endswith((".safetensors", ".index.json", ".bin"))}
    if second == "compressed":
        assert weights == {"model.compressed.safetensors"}
    elif second == "dense":
        assert weights == {"model.safetensors"}
    else:
        assert "model.safetensors" not in weights and "model.safetensors.index.json" in weights and len(weights) > 2
    x = tiny_pixel_values(model)
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(repo_id)
    assert torch.equal(_logits(reloaded, x), _logits(model, x))
    if second != "compressed":
        assert torch.equal(_logits(AutoModelForImageClassification.from_pretrained(repo_id), x), _logits(model, x))


def test_files_hf_sparsify_does_not_write_stay_in_the_repo(hub, repo_name, tmp_path):
    hf_sparsify.push_to_hub(unstructured_model(), repo_name)
    repo_id = f"tester/{repo_name}"
    HfApi().upload_file(path_or_fileobj=b"my notes", path_in_repo="notes.txt", repo_id=repo_id)
    hf_sparsify.push_to_hub(unstructured_model(seed=1), repo_id, compressed=True)
    assert hub.files(repo_id)["notes.txt"] == b"my notes"


# --------------------------------------------------------------------------------------------- transformers' arguments
def test_model_push_to_hub_takes_transformers_keyword_arguments(hub, repo_name):
    pruned = unstructured_model()
    url = pruned.push_to_hub(
        repo_name,
        tags=["cifar10", "demo"],
        safe_serialization=True,
        commit_message="my message",
        commit_description="my description",
        private=True,
        token=hub.token,
        max_shard_size="20KB",
        revision="main",
        create_pr=False,
    )
    repo_id = f"tester/{repo_name}"
    assert url.oid == hub.repos[repo_id].head.oid and hub.repos[repo_id].private
    assert hub.repos[repo_id].commits[-1].summary == "my message"
    assert "model.safetensors.index.json" in hub.files(repo_id)
    card = ModelCard.load(repo_id)
    assert {"cifar10", "demo", "hf-sparsify", "magnitude"} <= set(card.data.tags)


def test_push_arguments_that_cannot_be_honoured_are_clear_errors(hub, repo_name):
    pruned = unstructured_model()
    requests = len(hub.requests)
    with pytest.raises(ValueError, match="safetensors only.*drop safe_serialization=False"):
        pruned.push_to_hub(repo_name, safe_serialization=False)
    with pytest.raises(hf_sparsify.hub.PushArgumentError, match="does not take: use_auth_token, variant. It takes repo_id and commit_message"):
        pruned.push_to_hub(repo_name, use_auth_token="x", variant="fp16")
    with pytest.raises(hf_sparsify.HfSparsifyError):
        hf_sparsify.push_to_hub(pruned, repo_name, use_auth_token="x")
    assert len(hub.requests) == requests  # refused before any request


def test_tags_are_added_to_a_pushed_folders_generated_card(hub, repo_name, tmp_path):
    pruned = unstructured_model()
    pruned.save_pretrained(tmp_path, card_metadata={"tags": ["mine"]})
    hf_sparsify.push_to_hub(tmp_path, repo_name, tags="extra")
    tags = ModelCard.load(f"tester/{repo_name}").data.tags
    assert "mine" in tags and "extra" in tags


# --------------------------------------------------------------------------------------------- access before work
def test_check_push_access_accepts_a_valid_token(hub, repo_name):
    assert hf_sparsify.hub.check_push_access(repo_name) == f"tester/{repo_name}"
    assert hf_sparsify.hub.check_push_access(f"tester/{repo_name}", token=hub.token, endpoint=hub.url) == f"tester/{repo_name}"
    assert f"tester/{repo_name}" not in hub.repos  # nothing created


def test_check_push_access_refuses_a_bad_token(hub, repo_name):
    with pytest.raises(HubPushError, match="token was refused"):
        hf_sparsify.hub.check_push_access(repo_name, token="hf_wrong")


def test_check_push_access_names_an_unreachable_endpoint(hub, repo_name):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(HubPushError, match=f"cannot reach the Hub at {endpoint}"):
        hf_sparsify.hub.check_push_access(repo_name, endpoint=endpoint)


def test_check_push_access_refuses_another_namespace_and_no_token(hub, repo_name, monkeypatch):
    with pytest.raises(HubPushError, match="'tester', who is not a member of 'someone-else'"):
        hf_sparsify.hub.check_push_access(f"someone-else/{repo_name}")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubPushError, match="No Hugging Face token found"):
        hf_sparsify.hub.check_push_access(repo_name)


def test_pruning_config_from_a_hub_repo_id(hub, repo_name):
    pruned = unstructured_model()
    hf_sparsify.push_to_hub(pruned, repo_name)
    config = hf_sparsify.PruningConfig.from_pretrained(f"tester/{repo_name}")
    assert config == pruned.pruning_config and type(config) is hf_sparsify.MagnitudeConfig
    with pytest.raises(hf_sparsify.PruningConfigError, match="Could not get pruning_config.json"):
        hf_sparsify.PruningConfig.from_pretrained(f"tester/{repo_name}-missing")
