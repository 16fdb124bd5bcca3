"""``hf_sparsify.push_to_hub``: upload a pruned model, its card and chart in one commit.

```python
from hf_sparsify.hub import check_push_access

check_push_access("me/vit-magnitude-50")   # before any long work: token, endpoint, namespace
pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
url = pruned.push_to_hub("me/vit-magnitude-50", private=True, tags=["cifar10"])   # or hf_sparsify.push_to_hub(pruned, ...)
url                                       # the commit URL; url.oid is the commit id
# 'https://huggingface.co/me/vit-magnitude-50/commit/4f3c...'
hf_sparsify.push_to_hub("vit-magnitude-50", "me/vit-magnitude-50")   # a folder save_pretrained wrote
```

The repo is created (``HfApi.create_repo``, a no-op when it exists), the model is saved into a temporary folder
(weights, ``config.json``, ``pruning_config.json``, ``sparsity_summary.json``, ``README.md``,
``sparsity_chart.png``, and the image processor when given), and one ``HfApi.create_commit`` uploads it: the Hub
applies a commit entirely or not at all. The same commit deletes the weight files of the repo's previous version
that the new upload does not replace (``model.safetensors`` when a compressed model is pushed, shards and their
index, ``pytorch_model.bin``...), so that no loader can pick up stale weights.
A folder is uploaded as it is (hidden files excepted); its card is regenerated with the repo id in the snippet
when hf_sparsify generated it, and never written back into the folder. Nothing local is modified by a push,
failed or not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from ..errors import HfSparsifyError
from ..io.save import check_save_arguments, is_weights_file, write_model_files
from ..utils import get_logger
from .card import CARD_NAME, CHART_NAME, is_generated_card, write_model_card

__all__ = ["HubPushError", "PushArgumentError", "check_push_access", "push_to_hub"]

logger = get_logger(__name__)


class HubPushError(HfSparsifyError, RuntimeError):
    """An upload to the Hub failed or cannot be made (no token, a refused token, an unreachable endpoint). Nothing
    was committed by the failed call and no local file was changed."""


class PushArgumentError(HfSparsifyError, TypeError):
    """``push_to_hub`` got a keyword argument it does not take."""


def _operations(folder: Path, overrides: dict[str, Path] | None = None):
    from huggingface_hub import CommitOperationAdd

    overrides = overrides or {}
    ops = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in Path(relative).parts):
            continue
        if relative in overrides:
            continue
        ops.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(path)))
    for relative, path in sorted(overrides.items()):
        ops.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(path)))
    return ops


def _stale_files(api, repo_id: str, revision: str | None, uploaded: set[str], generated_card: bool) -> list:
    """Deletions for the files of the repo's previous version that the new upload must not leave behind: every
    weight file it does not replace, and a chart no longer shown by a regenerated card."""
    from huggingface_hub import CommitOperationDelete
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        present = api.list_repo_files(repo_id, revision=revision, repo_type="model")
    except RevisionNotFoundError:  # a new branch: nothing to replace
        return []
    stale = [f for f in present if f not in uploaded and (is_weights_file(f) or (generated_card and f == CHART_NAME))]
    return [CommitOperationDelete(path_in_repo=f) for f in sorted(stale)]


def _resolve_token(token: str | bool | None) -> str:
    from huggingface_hub import get_token

    if token is False:
        raise HubPushError("token=False: uploading to the Hub needs a write token.")
    resolved = token if isinstance(token, str) and token else get_token()
    if not resolved:
        raise HubPushError(
            "No Hugging Face token found, so nothing can be uploaded: run `hf auth login`, set the HF_TOKEN "
            "environment variable, or pass token='hf_...'. Nothing was uploaded and no local file was changed."
        )
    return resolved


def _is_connection_error(err: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(err, (ConnectionError, TimeoutError, OfflineModeIsEnabled)):
        return True
    return any(c.__name__ in ("TransportError", "ConnectError", "TimeoutException", "ConnectionError") for c in type(err).__mro__)


def _explain(err: Exception, endpoint: str, repo_id: str, what: str = "upload") -> HubPushError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, OfflineModeIsEnabled):
        hint = "HF_HUB_OFFLINE is set: unset it to upload"
    elif _is_connection_error(err):
        hint = f"cannot reach the Hub at {endpoint}: check the address (HF_ENDPOINT or endpoint=) and the connection"
    elif isinstance(err, HfHubHTTPError) and status in (401, 403):
        hint = "the token was refused: check that it is valid and has write access to this namespace"
    elif isinstance(err, HfHubHTTPError) and status is not None:
        hint = f"the Hub answered {status}"
    elif isinstance(err, ValueError) and "metadata" in str(err).lower():
        hint = "the model card's metadata was rejected"
    else:
        hint = type(err).__name__
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:600]
    done = "The commit was not made and no local file was changed" if what == "upload" else "Nothing was uploaded"
    return HubPushError(f"{what} of {repo_id} to {endpoint} failed ({hint}: {message}). {done}; fix the cause and push again.")


def check_push_access(repo_id: str, token: str | bool | None = None, endpoint: str | None = None) -> str:
    """Check that a push to ``repo_id`` can be made, before any long work (pruning): a token is found, the endpoint
    answers, the token is accepted and is not read-only, and the repo's namespace is the token's user or one of its
    organisations. Nothing is created or uploaded.

    Returns:
        the full repo id (``"user/name"`` for a bare ``"name"``).

    Raises:
        HubPushError: no token, an unreachable endpoint (named in the message), a refused or read-only token, or a
            namespace the token's user does not belong to.

    ```python
    from hf_sparsify.hub import check_push_access

    repo_id = check_push_access("me/vit-cap-50")   # then prune, then push
    ```
    """
    from huggingface_hub import HfApi, constants

    token = _resolve_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    endpoint_url = api.endpoint or constants.ENDPOINT
    try:
        who = api.whoami()
    except Exception as err:  # noqa: BLE001 - every failure is reported the same clear way
        raise _explain(err, endpoint_url, repo_id, what="access check") from None
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubPushError(f"the token of {who.get('name')} is read-only: uploading {repo_id} to {endpoint_url} needs a token with write access (https://huggingface.co/settings/tokens). Nothing was uploaded.")
    namespace, _, name = str(repo_id).rpartition("/")
    user = who.get("name")
    if not namespace:
        return f"{user}/{name}"
    orgs = {org.get("name") for org in who.get("orgs") or [] if isinstance(org, dict)}
    if who.get("type", "user") == "user" and namespace != user and namespace not in orgs:
        raise HubPushError(
            f"the token belongs to {user!r}, who is not a member of {namespace!r}: {repo_id} cannot be created or written "
            f"on {endpoint_url}. Use {user}/{name} or a token of a member. Nothing was uploaded."
        )
    return str(repo_id)


def _card_metadata(card_metadata: dict[str, Any] | None, tags: Iterable[str] | str | None) -> dict[str, Any] | None:
    if tags is None:
        return card_metadata
    tags = [tags] if isinstance(tags, str) else list(tags)
    merged = dict(card_metadata or {})
    merged["tags"] = [*(merged.get("tags") or []), *[t for t in tags if t not in (merged.get("tags") or [])]]
    return merged


def push_to_hub(
    model: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    card: bool = True,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    compressed: bool | str = False,
    image_processor: Any = None,
    card_template: str | os.PathLike | None = None,
    card_metadata: dict[str, Any] | None = None,
    max_shard_size: str | int | None = None,
    tags: list[str] | str | None = None,
    safe_serialization: bool = True,
    **unexpected: Any,
):
    """Upload a pruned model (or a folder ``save_pretrained`` wrote) to the Hub in one commit.

    Takes the keyword arguments of transformers' ``model.push_to_hub`` (``commit_message``, ``commit_description``,
    ``private``, ``token``, ``revision``, ``create_pr``, ``max_shard_size``, ``tags``, ``safe_serialization``) and
    hf_sparsify's own.

    Args:
        model: a model pruned by hf_sparsify (or loaded by its loaders), or a folder holding a saved one.
        repo_id: ``"namespace/name"`` (or ``"name"`` in your own namespace); created if it does not exist.
        card: write the model card (``README.md``) and its chart. With a folder, a README you wrote is uploaded
            unchanged; one hf_sparsify generated is regenerated with this ``repo_id``.
        private: create the repo private (``None``: the Hub's default). Ignored for an existing repo.
        token: a write token; default: ``HF_TOKEN`` or the token ``hf auth login`` stored.
        commit_message, commit_description, revision, create_pr: as in ``HfApi.create_commit``.
        endpoint: the Hub's URL (default: ``HF_ENDPOINT`` or https://huggingface.co).
        compressed: upload the compact sparse format (see ``save_pretrained(compressed=...)``).
        image_processor: also upload this image processor (e.g. the base model's ``AutoImageProcessor``).
        card_template, card_metadata: see :func:`hf_sparsify.save_pretrained`.
        max_shard_size: passed to ``save_pretrained``.
        tags: tags added to the card's metadata (as transformers does).
        safe_serialization: ``False`` is refused: hf_sparsify uploads safetensors only.

    Returns:
        the commit URL (a ``huggingface_hub.CommitInfo``, a ``str`` with ``.oid`` and ``.pr_url``).

    Raises:
        HubPushError: no token, a refused token, an unreachable endpoint, or an error from the Hub. Nothing is
            committed then, and no local file is changed.
        PushArgumentError: a keyword argument this function does not take.
    """
    from huggingface_hub import HfApi, constants

    if unexpected:
        raise PushArgumentError(
            f"push_to_hub got keyword argument(s) it does not take: {', '.join(sorted(unexpected))}. It takes repo_id and "
            "commit_message, commit_description, private, token, revision, create_pr, max_shard_size, tags, "
            "safe_serialization (as transformers), and card, endpoint, compressed, image_processor, card_template, card_metadata."
        )
    check_save_arguments({"safe_serialization": safe_serialization})
    card_metadata = _card_metadata(card_metadata, tags)
    is_folder = isinstance(model, (str, os.PathLike))
    if is_folder and not Path(model).is_dir():
        raise NotADirectoryError(f"{model} is not a folder: give a pruned model or the folder save_pretrained wrote.")
    token = _resolve_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    endpoint_url = api.endpoint or constants.ENDPOINT
    try:
        # First, so that a refused token fails fast and the card names the full repo id ("me/name").
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    except Exception as err:  # noqa: BLE001
        raise _explain(err, endpoint_url, repo_id) from err
    with tempfile.TemporaryDirectory(prefix="hf_sparsify_push_") as tmp:
        staging = Path(tmp)
        generated_card = False
        if is_folder:
            folder = Path(model)
            overrides: dict[str, Path] = {}
            readme = folder / CARD_NAME
            if card and (not readme.exists() or is_generated_card(readme)):
                # Regenerate the card with the repo id, in the staging folder: the user's folder is not touched.
                (staging / "card").mkdir()
                written = write_model_card(
                    staging / "card", source=folder, repo_id=repo_id, force=True, template=card_template, chart=True, metadata=card_metadata
                )
                overrides[CARD_NAME] = written
                generated_card = True
                if (staging / "card" / CHART_NAME).exists():
                    overrides[CHART_NAME] = staging / "card" / CHART_NAME
            elif card_metadata:
                logger.warning(f"hf_sparsify: {readme} was not generated by hf_sparsify, so it is uploaded unchanged: tags and card_metadata are not added to it.")
            operations = _operations(folder, overrides)
            method = None
        else:
            save_kwargs: dict[str, Any] = {"compressed": compressed, "card_metadata": card_metadata}
            if max_shard_size is not None:
                save_kwargs["max_shard_size"] = max_shard_size
            write_model_files(model, staging, **save_kwargs)
            if image_processor is not None:
                image_processor.save_pretrained(staging)
            if card:
                write_model_card(staging, repo_id=repo_id, template=card_template, force=True)
                generated_card = True
            operations = _operations(staging)
            method = getattr(getattr(model, "pruning_config", None), "method", None)
        message = commit_message or (f"Upload model pruned with hf_sparsify ({method})" if method else "Upload model pruned with hf_sparsify")
        try:
            uploaded = {op.path_in_repo for op in operations}
            operations += _stale_files(api, repo_id, revision, uploaded, generated_card)
            info = api.create_commit(
                repo_id=repo_id,
                operations=operations,
                commit_message=message,
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )
        except Exception as err:  # noqa: BLE001 - every failure is reported the same clear way
            raise _explain(err, endpoint_url, repo_id) from err
    logger.info(f"hf_sparsify: pushed {repo_id}: {info.commit_url}")
    return info

