"""``hf_sparsify.push_to_hub``: upload a pruned model, its card and chart in one commit.

```python
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
>>> url = hf_sparsify.push_to_hub(pruned, "me/vit-magnitude-50", private=True)   # or pruned.push_to_hub(...)
>>> url                                   # the commit URL; url.oid is the commit id
'https://huggingface.co/me/vit-magnitude-50/commit/4f3c...'
>>> hf_sparsify.push_to_hub("vit-magnitude-50", "me/vit-magnitude-50")            # a folder save_pretrained wrote
```

The repo is created (``HfApi.create_repo``, a no-op when it exists), the model is saved into a temporary folder
(weights, ``config.json``, ``pruning_config.json``, ``sparsity_summary.json``, ``README.md``,
``sparsity_chart.png``, and the image processor when given), and one ``HfApi.create_commit`` uploads it: the Hub applies a commit entirely or not at all.
A folder is uploaded as it is (hidden files excepted); its card is regenerated with the repo id in the snippet
when hf_sparsify generated it, and never written back into the folder. Nothing local is modified by a push,
failed or not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import HfSparsifyError
from ..utils import get_logger
from .card import CARD_NAME, CHART_NAME, is_generated_card, write_model_card

__all__ = ["push_to_hub", "HubPushError"]

logger = get_logger(__name__)


class HubPushError(HfSparsifyError, RuntimeError):
    """An upload to the Hub failed. Nothing was committed by the failed call and no local file was changed."""


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


def _explain(err: Exception, endpoint: str, repo_id: str) -> HubPushError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status in (401, 403):
        hint = "the token was refused: check that it is valid and has write access to this namespace"
    elif isinstance(err, HfHubHTTPError) and status is not None:
        hint = f"the Hub answered {status}"
    elif isinstance(err, ValueError) and "metadata" in str(err).lower():
        hint = "the model card's metadata was rejected"
    else:
        hint = type(err).__name__
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:600]
    return HubPushError(
        f"upload of {repo_id} to {endpoint} failed ({hint}: {message}). The commit was not made and no local file "
        "was changed; fix the cause and push again."
    )


def push_to_hub(
    model: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    card: bool = True,
    private: bool | None = None,
    token: str | None = None,
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
):
    """Upload a pruned model (or a folder ``save_pretrained`` wrote) to the Hub in one commit.

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

    Returns:
        the commit URL (a ``huggingface_hub.CommitInfo``, a ``str`` with ``.oid`` and ``.pr_url``).

    Raises:
        HubPushError: no token, a refused token, or an error from the Hub. Nothing is committed then, and no local
            file is changed.
    """
    from huggingface_hub import HfApi, constants

    token = _resolve_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    endpoint_url = api.endpoint or constants.ENDPOINT
    if isinstance(model, (str, os.PathLike)) and not Path(model).is_dir():
        raise NotADirectoryError(f"{model} is not a folder: give a pruned model or the folder save_pretrained wrote.")
    try:
        # First, so that a refused token fails fast and the card names the full repo id ("me/name").
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    except Exception as err:  # noqa: BLE001
        raise _explain(err, endpoint_url, repo_id) from err
    with tempfile.TemporaryDirectory(prefix="hf_sparsify_push_") as tmp:
        staging = Path(tmp)
        if isinstance(model, (str, os.PathLike)):
            folder = Path(model)
            overrides: dict[str, Path] = {}
            readme = folder / CARD_NAME
            if card and (not readme.exists() or is_generated_card(readme)):
                # Regenerate the card with the repo id, in the staging folder: the user's folder is not touched.
                (staging / "card").mkdir()
                written = write_model_card(staging / "card", source=folder, repo_id=repo_id, force=True, template=card_template, chart=True)
                overrides[CARD_NAME] = written
                if (staging / "card" / CHART_NAME).exists():
                    overrides[CHART_NAME] = staging / "card" / CHART_NAME
            operations = _operations(folder, overrides)
            method = None
        else:
            save_kwargs: dict[str, Any] = {"card": False, "compressed": compressed, "card_metadata": card_metadata}
            if max_shard_size is not None:
                save_kwargs["max_shard_size"] = max_shard_size
            from ..io.save import save_pretrained

            save_pretrained(model, staging, **save_kwargs)
            if image_processor is not None:
                image_processor.save_pretrained(staging)
            if card:
                write_model_card(staging, repo_id=repo_id, template=card_template, force=True)
            operations = _operations(staging)
            method = getattr(getattr(model, "pruning_config", None), "method", None)
        message = commit_message or (f"Upload model pruned with hf_sparsify ({method})" if method else "Upload model pruned with hf_sparsify")
        try:
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
