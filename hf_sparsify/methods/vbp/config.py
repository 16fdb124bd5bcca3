"""Configuration of VBP (Variance-Based Pruning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...configuration import Citation, PruningConfig, PruningConfigError

ALLOCATIONS = ("global", "per_layer")
GLOBAL_NORMALIZATIONS = ("mean", "max", "none", "output")
COMPENSATION_TOKENS = ("head", "all")

CITATION = Citation(
    "VBP (Variance-Based Pruning)",
    """@inproceedings{berisha2025vbp,
  title     = {Variance-Based Pruning for Accelerating and Compressing Trained Networks},
  author    = {Berisha, Uranik and Mehnert, Jens and Condurache, Alexandru Paul},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025},
  eprint    = {2507.12988},
  archivePrefix = {arXiv}
}""",
)


@dataclass(kw_only=True)
class VBPConfig(PruningConfig):
    """Variance-Based Pruning: remove the MLP hidden neurons whose post-activation value varies least over the
    calibration data, and fold each removed neuron's mean into the next layer's bias (mean-shift compensation).
    The model becomes physically smaller (narrower ``fc1``/``fc2``, ``gate/up/down_proj`` or ``pwconv1/2``).

    Give exactly one of ``pruning_ratio`` and ``target_macs_reduction``.

    Args:
        pruning_ratio: fraction of the MLP hidden neurons removed (over all pruned MLPs), in [0, 1).
        target_macs_reduction: fraction of the whole model's MACs per image to remove, in (0, 1); the widths
            are searched so that the pruned model is as close as possible to the target.
        allocation: ``"global"``: one variance threshold across all MLPs, on variances normalised per layer
            (see ``global_normalization``), so blocks end up with different widths; ``"per_layer"``: the same
            ratio in every MLP.
        global_normalization: how each MLP's variances are made comparable before the global threshold:
            ``"output"`` (default) multiplies them by the mean squared norm of the layer's ``fc2`` columns (times
            LayerScale²), so that every score is in units of the residual stream the MLP writes to: removing
            neuron ``j`` adds about ``σ_j² ‖γ ⊙ W2[:, j]‖²`` of output variance after compensation, and the
            layer's average column norm stands in for ``‖W2[:, j]‖`` (ranking inside a layer stays by variance,
            as in VBP). ``"mean"`` divides by the layer's mean variance, ``"max"`` by its largest variance,
            ``"none"`` compares raw variances. See benchmarks/RESULTS.md for the comparison on CIFAR-10.
        compensation: fold ``W2[:, removed] · mean[removed]`` into the consumer's bias (the VBP mean shift).
            ``False`` just removes the neurons (the baseline). ``None`` (default): fold wherever the fold is exact;
            ConvNeXtV2's GRN makes it inexact, so there the neurons are just removed (the result records it), and
            ``True`` is refused with an explanation.
        compensation_tokens: which tokens' mean is folded in the model's **last** block. ``"head"`` (default): the
            tokens the task head reads, when it reads only some (the CLS token of ViT/DeiT classifiers, CLS and
            distillation tokens of DeiT with teacher), since the last block's output reaches the logits only
            through them; elsewhere, and for models whose output uses every token or position, the mean over all
            tokens. ``"all"``: the mean over all tokens in every block (the paper's fold).
        min_neurons_per_layer: every pruned MLP keeps at least this many neurons (rounded up to ``round_to``);
            ``0`` allows removing a whole MLP (its output becomes the constant folded bias).
        round_to: kept widths are multiples of this (fast kernels like multiples of 8); a layer may also stay
            at its full width. ``1`` disables rounding.
        num_calibration_samples: images drawn at random (seeded) for the statistics; default 512.

    ``targets`` / ``ignore`` select MLPs by regular expressions searched in the MLP's module name or the names
    of its layers (``r"layers\\.(0|1)\\."``).

    Example:

    ```python
    >>> import hf_sparsify
    >>> config = hf_sparsify.VBPConfig(target_macs_reduction=0.2, num_calibration_samples=64)   # or pruning_ratio=0.5
    >>> pruned = hf_sparsify.prune(model, config, calibration, image_processor=processor)
    >>> pruned.save_pretrained(tmp_dir)   # reload: AutoSparseModelForImageClassification.from_pretrained(tmp_dir)
    ```
    """

    target_field: ClassVar[str] = "pruning_ratio"
    citation: ClassVar[Citation] = CITATION
    #: images for the statistics when num_calibration_samples is not given
    default_num_calibration_samples: ClassVar[int] = 512
    demo_settings: ClassVar[dict[str, Any]] = {"pruning_ratio": 0.3}
    quick_settings: ClassVar[dict[str, Any]] = {"pruning_ratio": 0.3, "round_to": 1, "num_calibration_samples": 8}

    pruning_ratio: float | None = field(default=None, metadata={"help": "fraction of the MLP hidden neurons removed (over all pruned MLPs), in [0, 1)"})
    target_macs_reduction: float | None = field(
        default=None,
        metadata={"help": "fraction of the whole model's MACs per image to remove, in (0, 1) (instead of pruning_ratio)"},
    )
    allocation: str = field(
        default="global",
        metadata={"help": "'global': one threshold on normalised variances across MLPs (layers get different widths); 'per_layer': the same ratio in every MLP"},
    )
    global_normalization: str = field(
        default="output",
        metadata={"help": "how MLPs' variances are made comparable for 'global': 'output' (times the mean squared fc2 column norm, LayerScale included), 'mean', 'max' or 'none'"},
    )
    compensation: bool | None = field(
        default=None,
        metadata={"help": "fold each removed neuron's mean into the next layer's bias (the VBP mean shift); default: wherever the fold is exact (not across ConvNeXtV2's GRN)"},
    )
    compensation_tokens: str = field(
        default="head",
        metadata={"help": "tokens whose mean is folded in the last block: 'head' (those the classifier reads, e.g. CLS) or 'all' (the paper's fold)"},
    )
    min_neurons_per_layer: int = field(default=1, metadata={"help": "neurons every pruned MLP keeps at least (rounded up to round_to); 0 allows removing a whole MLP"})
    round_to: int = field(default=8, metadata={"help": "kept widths are multiples of this (kernel-friendly); a layer may also stay at full width; 1 disables rounding"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.pruning_ratio is None) == (self.target_macs_reduction is None):
            given = "both" if self.pruning_ratio is not None else "neither"
            raise PruningConfigError(
                f"VBPConfig needs exactly one of pruning_ratio (fraction of MLP neurons removed) and "
                f"target_macs_reduction (fraction of the model's MACs removed); {given} was given. "
                "For example VBPConfig(pruning_ratio=0.5) or VBPConfig(target_macs_reduction=0.35)."
            )
        if self.pruning_ratio is not None and not 0 <= self.pruning_ratio < 1:
            raise PruningConfigError(
                f"pruning_ratio must be in [0, 1) (the fraction of MLP hidden neurons removed), got {self.pruning_ratio}: "
                + ("a ratio of 1 would delete every neuron. " if self.pruning_ratio >= 1 else "")
                + "For example pruning_ratio=0.5 removes half of them."
            )
        if self.target_macs_reduction is not None and not 0 < self.target_macs_reduction < 1:
            raise PruningConfigError(
                f"target_macs_reduction must be in (0, 1) (the fraction of the model's MACs removed), got {self.target_macs_reduction}; "
                "for example 0.35 removes 35% of the MACs."
            )
        self._check_choice("allocation", self.allocation, ALLOCATIONS)
        self._check_choice("global_normalization", self.global_normalization, GLOBAL_NORMALIZATIONS)
        self._check_choice("compensation_tokens", self.compensation_tokens, COMPENSATION_TOKENS)
        if self.min_neurons_per_layer < 0:
            raise PruningConfigError(f"min_neurons_per_layer must be ≥ 0, got {self.min_neurons_per_layer} (0 allows removing a whole MLP).")
        if self.round_to < 1:
            raise PruningConfigError(f"round_to must be ≥ 1 (1 disables rounding), got {self.round_to}.")

    def calibration_images(self) -> int:
        return self.num_calibration_samples or self.default_num_calibration_samples
