"""Configurations of SOSP (Second-Order Structured Pruning): ``SOSPHConfig`` (``"sosp-h"``) and ``SOSPIConfig``
(``"sosp-i"``) on the shared fields of :class:`SOSPConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Union

from ...configuration import CUSTOM_LOSS, Citation, LossFieldMixin, PruningConfig, PruningConfigError

__all__ = ["SOSPConfig", "SOSPHConfig", "SOSPIConfig", "BUDGET_UNITS", "LOSSES", "STRUCTURES"]

#: what ``pruning_ratio`` is a fraction of (``"structures"``: of the selected neurons, heads and channels)
BUDGET_UNITS = ("structures", "parameters", "macs")
#: the structure kinds a user may name
STRUCTURES = ("mlp", "heads", "channels")
#: the losses SOSP's curvature is taken of (``"features"`` is linear in the outputs: its Gauss–Newton matrix is 0)
LOSSES = ("labels", "kl")
ALLOCATIONS = ("global", "dp")
HESSIANS = ("exact", "gauss_newton")
SALIENCIES = ("sum_of_abs", "abs_of_sum")
SOSP_LOSS_OPTIONS = (
    "loss='labels' (cross-entropy of the classification head, needs labelled calibration data), loss='kl' (label-free: "
    "the divergence from the model's own outputs at the start, whose Hessian is the Gauss–Newton / Fisher matrix; for "
    "backbones such as Dinov2Model), or loss=<callable(model, batch) -> scalar tensor>"
)

CITATION = Citation(
    "SOSP (Second-Order Structured Pruning)",
    """@inproceedings{nonnenmacher2022sosp,
  title     = {{SOSP}: Efficiently Capturing Global Correlations by Second-Order Structured Pruning},
  author    = {Nonnenmacher, Manuel and Pfeil, Thomas and Steinwart, Ingo and Reeb, David},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022},
  eprint    = {2110.11395},
  archivePrefix = {arXiv}
}""",
)


@dataclass(kw_only=True)
class SOSPConfig(LossFieldMixin, PruningConfig):
    """Fields shared by SOSP-H and SOSP-I (see docs/sosp.md).

    SOSP removes whole structures — MLP hidden neurons, attention heads, ConvNeXt hidden channels — ranked by a
    second-order estimate of the loss change their removal causes, with one ranking across all layers and kinds
    (the per-layer widths are an outcome: ``hf_sparsify.bottleneck_report`` reads them). Every saliency is a loss
    change, so neurons, heads and channels of every layer compete on one scale (``normalization="none"`` in the
    structured core). The model physically shrinks and reloads in one call.

    Args:
        pruning_ratio: the fraction removed, in [0, 1), of what ``budget_unit`` counts.
        budget_unit: ``"macs"`` (default): of the whole model's MACs per image; ``"parameters"``: of its parameters;
            ``"structures"``: of the selected neurons, heads and channels (each counts 1, the paper's count).
        structures: the kinds pruned, any of ``"mlp"``, ``"heads"``, ``"channels"``; a kind the model does not have
            is refused. ``None`` (default): every kind the model has (MLP neurons and heads of ViT/DeiT/DINOv2,
            channels of ConvNeXt).
        loss: ``"labels"`` (cross-entropy; needs labels), ``"kl"`` (label-free: KL divergence from the dense
            model's outputs, ``½‖f − f_ref‖²`` for a backbone's hidden states; its gradient is 0 at the start, so
            only the second-order term ranks), or a callable ``loss_fn(model, batch) -> scalar``.
        first_order: keep the gradient term ``|g_s|`` in the saliency.
        min_heads_per_layer: every attention keeps at least this many heads (default 1). ``0`` allows removing
            every head of a layer (not of the whole model).
        min_neurons_per_layer: every MLP / ConvNeXt block keeps at least this many neurons or channels (rounded up
            to ``round_to``; default 8: guards against layer collapse at high ratios).
        round_to: kept MLP and channel widths are multiples of this (or the full width); heads are counted one by
            one. ``1`` disables rounding.
        allocation: ``"global"``: one saliency threshold across all layers and kinds (SOSP's); ``"dp"``: the widths
            minimising the summed saliency removed within the budget (dynamic programme over the cost tables).
        rank_per_cost: rank by saliency per unit of the budget (per MAC / parameter) instead of by saliency.
        iterative_steps: prune in this many rounds, each removing an equal share of the budget, the saliencies
            recomputed on the pruned model before each round.
        num_calibration_samples: images averaged (default 512).
    """

    target_field: ClassVar[str] = "pruning_ratio"
    citation: ClassVar[Citation] = CITATION
    loss_options: ClassVar[str] = SOSP_LOSS_OPTIONS
    label_free_loss: ClassVar[str] = "kl"
    default_num_calibration_samples: ClassVar[int] = 512
    demo_settings: ClassVar[dict[str, Any]] = {"pruning_ratio": 0.3, "num_calibration_samples": 256}
    quick_settings: ClassVar[dict[str, Any]] = {"pruning_ratio": 0.2, "round_to": 1, "min_neurons_per_layer": 1, "num_calibration_samples": 8, "calibration_batch_size": 4}
    label_free_settings: ClassVar[dict[str, Any] | None] = {"loss": "kl"}

    pruning_ratio: float = field(default=0.3, metadata={"help": "fraction removed, in [0, 1), of what budget_unit counts (default: the model's MACs)"})
    budget_unit: str = field(
        default="macs",
        metadata={"help": "'macs' (the whole model's MACs per image), 'parameters' (its parameters) or 'structures' (the selected neurons, heads and channels, 1 each)"},
    )
    structures: list[str] | None = field(
        default=None,
        metadata={"help": "kinds pruned, any of 'mlp', 'heads', 'channels' (a kind the model lacks is refused); default: every kind the model has"},
    )
    loss: Union[str, Callable[..., Any]] = field(
        default="labels",
        metadata={"help": "'labels' (cross-entropy; needs labels), 'kl' (label-free: divergence from the dense model's outputs, for backbones), or a callable loss_fn(model, batch) in Python"},
    )
    first_order: bool = field(default=True, metadata={"help": "keep the gradient term |g_s| in the saliency"})
    min_heads_per_layer: int = field(default=1, metadata={"help": "heads every attention keeps at least; 0 allows removing all heads of a layer"})
    min_neurons_per_layer: int = field(
        default=8, metadata={"help": "MLP neurons / ConvNeXt channels every block keeps at least (rounded up to round_to)"}
    )
    round_to: int = field(default=8, metadata={"help": "kept MLP / channel widths are multiples of this (or the full width); heads count 1 by 1; 1 disables rounding"})
    allocation: str = field(
        default="global",
        metadata={"help": "'global': one saliency threshold across layers and kinds; 'dp': widths minimising the removed saliency within the budget"},
    )
    rank_per_cost: bool = field(default=False, metadata={"help": "rank structures by saliency per MAC / parameter saved instead of by saliency"})
    iterative_steps: int = field(default=1, metadata={"help": "prune in this many rounds, recomputing the saliencies on the pruned model before each"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.pruning_ratio, (int, float)) and 0 <= self.pruning_ratio < 1):
            raise PruningConfigError(
                f"pruning_ratio must be in [0, 1) (the fraction of the {self.budget_unit} removed), got {self.pruning_ratio}; "
                "for example pruning_ratio=0.35 removes 35%."
            )
        self._check_choice("budget_unit", self.budget_unit, BUDGET_UNITS)
        if self.structures is not None:
            if not self.structures:
                raise PruningConfigError(f"structures=[] prunes nothing: name some of {list(STRUCTURES)}, or None for every kind the model has.")
            for kind in self.structures:
                self._check_choice("structures", kind, STRUCTURES)
        if callable(self.loss):
            pass
        elif self.loss == "features":
            raise PruningConfigError(
                "loss='features' is linear in the model's outputs, so its curvature (Gauss–Newton matrix) is zero and SOSP "
                f"would rank nothing: use {SOSP_LOSS_OPTIONS}."
            )
        else:
            self._check_choice("loss", self.loss, LOSSES + (CUSTOM_LOSS,))
        for name in ("min_heads_per_layer", "min_neurons_per_layer"):
            if getattr(self, name) < 0:
                raise PruningConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}.")
        if self.round_to < 1:
            raise PruningConfigError(f"round_to must be ≥ 1 (1 disables rounding), got {self.round_to}.")
        self._check_choice("allocation", self.allocation, ALLOCATIONS)
        if self.iterative_steps < 1:
            raise PruningConfigError(f"iterative_steps must be ≥ 1 (1: prune at once), got {self.iterative_steps}.")

    def calibration_images(self) -> int:
        return self.num_calibration_samples or self.default_num_calibration_samples


@dataclass(kw_only=True)
class SOSPHConfig(SOSPConfig):
    """SOSP-H: second-order structured pruning by one Hessian-vector product.

    With every structure gated on its outgoing weights (``θ(γ) = θ_rest + Σ_s γ_s θ_s``), one gradient and one
    Hessian-vector product in gate space with ``v = 1`` give, for every structure of every layer at once, the gate
    gradient ``g_s`` and the Hessian row sum ``(G·1)_s = θ_sᵀ H θ_S``: the structure's correlations with all the
    others, at about the cost of a few gradient passes. Fields shared with SOSP-I: :class:`SOSPConfig`.

    Args:
        saliency: ``"sum_of_abs"`` (default, chosen by measurement on held-out train images: benchmarks/RESULTS.md,
            "SOSP (issue 13)"): ``|g_s| + ½|(G·1)_s|``, the first- and second-order terms each counted as a loss
            change; ``"abs_of_sum"``: ``|−g_s + ½(G·1)_s|``, the structure's share of the loss change when every
            structure is removed (the terms may cancel).
        hessian: ``"exact"`` (default): the Hessian-vector product by double backward (the full Hessian);
            ``"gauss_newton"``: the Gauss–Newton-vector product ``JᵀΛJ·1`` (positive semi-definite, no second
            derivatives of the network).

    Example:

    ```python
    >>> import hf_sparsify
    >>> config = hf_sparsify.SOSPHConfig(pruning_ratio=0.3, num_calibration_samples=64)   # 30% of the MACs
    >>> pruned = hf_sparsify.prune(model, config, calibration, image_processor=processor)
    >>> round(pruned.pruning_result.summary["macs_reduction"], 2)
    0.3
    >>> pruned.save_pretrained(tmp_dir)   # reload: AutoSparseModelForImageClassification.from_pretrained(tmp_dir)
    ```
    """

    saliency: str = field(default="sum_of_abs", metadata={"help": "'sum_of_abs': |g| + |G·1|/2 (default, measured best), or 'abs_of_sum': |-g + (G·1)/2|"})
    hessian: str = field(
        default="exact",
        metadata={"help": "'exact': Hessian-vector product by double backward (the full Hessian); 'gauss_newton': Gauss-Newton-vector product"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("saliency", self.saliency, SALIENCIES)
        self._check_choice("hessian", self.hessian, HESSIANS)


@dataclass(kw_only=True)
class SOSPIConfig(SOSPConfig):
    """SOSP-I: second-order structured pruning with the pairwise Gauss–Newton matrix.

    Forms the ``S × S`` Gauss–Newton matrix ``G = (1/N) Σ_n J_nᵀ Λ_n J_n`` in gate space (``J_n``: the Jacobian of
    image ``n``'s output in the structures' gates, ``Λ_n``: the Hessian of its loss in that output) and ranks by
    ``|g_s| + ½ Σ_t |G_st|``. ``G`` takes ``S² × 4`` bytes (float32): 2.5 MB for the bundled ViT (784 structures),
    1.4 GB for DeiT-S, 5.5 GB for ViT-B; it is checked against the free memory before any work. Fields shared with
    SOSP-H: :class:`SOSPConfig`.

    Args:
        gn_samples: ``None`` (default): the exact Gauss–Newton matrix, one backward pass per non-zero eigenvalue of
            ``Λ_n`` (9 for 10 classes), for outputs of at most 64 classes; else, and for a backbone's hidden states,
            an unbiased estimate from this many random directions per image (16 when not given).
        max_memory_gb: the largest Gauss–Newton matrix allowed, in GiB; default: what the device has free.

    Example:

    ```python
    >>> import hf_sparsify
    >>> config = hf_sparsify.SOSPIConfig(pruning_ratio=0.3, num_calibration_samples=64)
    >>> pruned = hf_sparsify.prune(model, config, calibration, image_processor=processor)
    >>> info = pruned.pruning_result.info
    >>> info["num_structures"], info["gauss_newton_bytes"]
    (784, 2458624)
    ```
    """

    gn_samples: int | None = field(
        default=None,
        metadata={"help": "None: exact Gauss-Newton matrix (one backward per class direction, up to 64 classes); k: k random directions per image (unbiased; 16 for many classes or backbones)"},
    )
    max_memory_gb: float | None = field(default=None, metadata={"help": "largest S x S Gauss-Newton matrix allowed, in GiB; default: the device's free memory"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gn_samples is not None and self.gn_samples < 1:
            raise PruningConfigError(f"gn_samples must be ≥ 1 (random directions per image) or None (exact), got {self.gn_samples}.")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise PruningConfigError(f"max_memory_gb must be > 0 (GiB) or None, got {self.max_memory_gb}.")
