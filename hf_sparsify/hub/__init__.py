"""Publishing: model cards (:mod:`.card`, with :mod:`.context` and :mod:`.chart`) and uploads to the Hugging Face
Hub (:mod:`.push`)."""

from .card import (
    CARD_NAME,
    CHART_NAME,
    GENERATED_MARKER,
    ModelCardTemplateError,
    build_model_card,
    is_generated_card,
    render_sparsity_chart,
    write_model_card,
)
from .push import HubPushError, PushArgumentError, check_push_access, push_to_hub

__all__ = [
    "CARD_NAME",
    "CHART_NAME",
    "GENERATED_MARKER",
    "HubPushError",
    "ModelCardTemplateError",
    "PushArgumentError",
    "build_model_card",
    "check_push_access",
    "is_generated_card",
    "push_to_hub",
    "render_sparsity_chart",
    "write_model_card",
]
