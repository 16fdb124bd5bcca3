"""Configurations of the Fisher-based unstructured pruners: CAP, WoodFisher and FastCAP."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Union

from ...configuration import CUSTOM_LOSS, Citation, LossFieldMixin, PruningConfig, PruningConfigError, check_mask_structure

__all__ = ["GradientFisherConfig", "BlockFisherConfig", "CAPConfig", "WoodFisherConfig", "FastCAPConfig", "LOSSES"]

LOSSES = ("labels", "features")

CAP_CITATION = Citation(
    "CAP (Correlation-Aware Pruning)",
    """@inproceedings{kuznedelev2023cap,
  title     = {{CAP}: Correlation-Aware Pruning for Highly-Accurate Sparse Vision Models},
  author    = {Kuznedelev, Denis and Kurtic, Eldar and Frantar, Elias and Alistarh, Dan},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023},
  eprint    = {2210.09223},
  archivePrefix = {arXiv}
}""",
)
WOODFISHER_CITATION = Citation(
    "WoodFisher",
    """@inproceedings{singh2020woodfisher,
  title     = {{WoodFisher}: Efficient Second-Order Approximation for Neural Network Compression},
  author    = {Singh, Sidak Pal and Alistarh, Dan},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2020},
  eprint    = {2004.14340},
  archivePrefix = {arXiv}
}""",
)
# FastCAP is CAP's variant for large models, released with CAP's code: it cites the CAP paper.
FASTCAP_CITATION = Citation("FastCAP (CAP's variant for large models)", CAP_CITATION.bibtex)
# Small enough for the bundled 1,000 calibration images and about a minute on 2 CPU cores.
_DEMO = {"sparsity": 0.5, "fisher_block_size": 48, "num_grads": 128, "grad_batch_size": 8}
_QUICK = {"sparsity": 0.5, "fisher_block_size": 16, "num_grads": 2}


@dataclass(kw_only=True)
class GradientFisherConfig(LossFieldMixin, PruningConfig):
    """Fields shared by CAP, WoodFisher and FastCAP: the target, the gradients and the Fisher.

    Args:
        sparsity: fraction of the targeted weights removed, in [0, 1).
        mask_structure: ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``: at most N weights kept in every group of M
            consecutive weights along the input dimension; the OBS updates stay inside the Fisher blocks, which
            hold whole groups). N:M fixes ``sparsity = 1 − N/M``.
        fisher_block_size: ``B``, weights per Fisher block. A weight of ``d`` entries uses the smallest divisor of
            ``d`` that is ``≥ B`` (and a multiple of M for N:M); the size used is reported per layer.
        num_grads: mini-batch gradients averaged into the Fisher (per recomputation).
        grad_batch_size: images per mini-batch gradient (``None``: ``calibration_batch_size``). A
            ``datasets.Dataset`` is cut into batches of this size; a DataLoader or a list of batches must already
            have it (else a ``CalibrationDataError``); with ``None`` they keep their own batches.
        damp: dampening ``λ`` added to the Fisher's diagonal (absolute for CAP and WoodFisher, relative to the mean
            diagonal for FastCAP), > 0.
        num_recomputations: split the pruning into this many steps; sparsity is interpolated linearly from the
            current level to ``sparsity`` and the Fisher is re-estimated from fresh gradients at every step.
        loss: ``"labels"`` (cross-entropy of the classification head; needs labels), ``"features"`` (label-free:
            gradients of ``⟨v, features⟩`` with random Gaussian ``v``, whose expected outer product is the
            Gauss–Newton matrix of feature matching; for backbones such as ``Dinov2Model``), or a callable
            ``loss_fn(model, batch) -> scalar tensor`` (saved as ``"custom"``).
        mixed_precision: ``"no"`` or ``"bf16"``: autocast of the forward passes that produce gradients (the
            Fisher is always accumulated in ``fisher_dtype``, float64 for FastCAP, whatever the model's dtype).
    """

    #: mini-batch gradients per recomputation when neither num_grads nor num_calibration_samples is given
    default_num_grads: ClassVar[int] = 1024
    demo_settings: ClassVar[dict[str, Any]] = _DEMO
    quick_settings: ClassVar[dict[str, Any]] = _QUICK
    #: without labels (a backbone: Dinov2Model, DINOv3ViTModel, TimmWrapperModel) the gradients come from the
    #: label-free feature-matching loss
    label_free_settings: ClassVar[dict[str, Any] | None] = {"loss": "features"}

    sparsity: float = field(default=0.5, metadata={"help": "fraction of the targeted weights removed, in [0, 1)"})
    mask_structure: str = field(
        default="unstructured",
        metadata={"help": "'unstructured', or 'N:M' such as '2:4' (at most N weights kept in every M consecutive weights along the input dimension; fixes sparsity = 1 - N/M)"},
    )
    fisher_block_size: int = field(
        default=192,
        metadata={"help": "B, weights per Fisher block; a layer uses the smallest divisor of its size that is >= B (and a multiple of M for N:M)"},
    )
    num_grads: int | None = field(
        default=None,
        metadata={"help": "mini-batch gradients in the Fisher per recomputation; default: num_calibration_samples / grad_batch_size, else 1024 (FastCAP 256)"},
    )
    grad_batch_size: int | None = field(
        default=None,
        metadata={"help": "images per mini-batch gradient (default: calibration_batch_size); a datasets.Dataset is cut into batches of this size, a DataLoader or list of batches must already have it"},
    )
    damp: float = field(
        default=1e-8,
        metadata={"help": "dampening added to the Fisher's diagonal (absolute for CAP and WoodFisher, relative to the mean diagonal for FastCAP), > 0"},
    )
    num_recomputations: int = field(
        default=1,
        metadata={"help": "prune in this many steps, sparsity interpolated linearly, the Fisher re-estimated from fresh gradients at each"},
    )
    loss: Union[str, Callable[..., Any]] = field(
        default="labels",
        metadata={"help": "'labels' (cross-entropy of the classification head; needs labels), 'features' (label-free: Gauss-Newton of feature matching, for backbones), or a callable loss_fn(model, batch) in Python"},
    )
    mixed_precision: str = field(
        default="no",
        metadata={"help": "'no' or 'bf16': autocast of the forward passes that produce gradients (the Fisher is accumulated in fisher_dtype)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_fraction("sparsity", self.sparsity)
        self.nm = check_mask_structure(self.mask_structure, self.sparsity)
        if self.fisher_block_size < 1:
            raise PruningConfigError(f"fisher_block_size must be ≥ 1 (weights per Fisher block, e.g. 192), got {self.fisher_block_size}.")
        if self.num_grads is not None and self.num_grads < 1:
            raise PruningConfigError(f"num_grads must be ≥ 1 (mini-batch gradients in the Fisher, e.g. 1024), got {self.num_grads}.")
        if self.grad_batch_size is not None and self.grad_batch_size < 1:
            raise PruningConfigError(f"grad_batch_size must be ≥ 1 or None, got {self.grad_batch_size}.")
        if self.num_grads is not None and self.num_calibration_samples is not None and self.num_grads * self.effective_batch_size != self.num_calibration_samples:
            raise PruningConfigError(
                f"num_grads={self.num_grads} gradients of {self.effective_batch_size} images read {self.num_grads * self.effective_batch_size} "
                f"images, not num_calibration_samples={self.num_calibration_samples}: give one of num_grads and num_calibration_samples "
                "(num_calibration_samples counts images for every method)."
            )
        if not (isinstance(self.damp, (int, float)) and self.damp > 0 and self.damp < float("inf")):
            raise PruningConfigError(f"damp must be a finite number > 0 (the Fisher's dampening, e.g. 1e-8), got {self.damp}.")
        if self.num_recomputations < 1:
            raise PruningConfigError(f"num_recomputations must be ≥ 1, got {self.num_recomputations}.")
        if not callable(self.loss):
            self._check_choice("loss", self.loss, LOSSES + (CUSTOM_LOSS,))
        self._check_choice("mixed_precision", self.mixed_precision, ("no", "bf16"))

    @property
    def effective_batch_size(self) -> int:
        return self.grad_batch_size or self.calibration_batch_size

    @property
    def gradients(self) -> int:
        """Mini-batch gradients per recomputation: ``num_grads``, else ``num_calibration_samples`` divided by the
        gradient batch size (rounded up), else the method's default."""
        if self.num_grads is not None:
            return self.num_grads
        if self.num_calibration_samples is not None:
            return math.ceil(self.num_calibration_samples / self.effective_batch_size)
        return self.default_num_grads

    def calibration_images(self) -> int:
        return self.gradients * self.effective_batch_size

    def nm_pattern(self) -> tuple[int, int] | None:
        return self.nm


@dataclass(kw_only=True)
class BlockFisherConfig(GradientFisherConfig):
    """Fields of the pruners with one Fisher block per ``B`` weights (CAP, WoodFisher).

    Args:
        sparsity_distribution: ``"global"`` (one threshold across all target layers, the paper's) or
            ``"uniform"`` (every layer pruned to ``sparsity``).
        fisher_dtype: ``"float64"`` (default) or ``"float32"``: dtype of the stored Fisher blocks and of the
            elimination. Inverses, replays and OBS updates are always computed in float64. float32 halves the
            Fisher memory, but its rounding of the sums is not small next to the default ``damp=1e-8`` when the
            blocks are rank-deficient (fewer gradients than ``B``, or correlated ones): its masks can then differ
            from float64's.
        fisher_device: where the Fisher blocks live and the elimination runs (``"cpu"``, ``"cuda:1"``...);
            ``None``: the model's device.
        blocks_in_parallel: blocks processed together by the inversion and the elimination (memory of the
            elimination ≈ ``blocks_in_parallel·B²`` floats); ``-1``: chosen to use about 256 MiB (CPU) or 2 GiB (GPU).
        max_fisher_memory_gb: if the Fisher blocks of all targets (``d·B`` floats) exceed this, the layers are
            processed in groups that fit (layer streaming), each group with its own pass of gradients; with a
            global distribution a second pass per group rebuilds the weights. ``None``: all layers at once.
        nm_damp: N:M masks only: extra dampening relative to the mean diagonal of each layer's Fisher,
            ``λ = damp + nm_damp·mean(diag F)``. Every block must lose ``M − N`` of every ``M`` weights, so, unlike the
            global selection of unstructured masks, the selection cannot spare the blocks whose Fisher is poorly
            estimated, and the OBS updates with the tiny absolute ``damp`` follow the noise of those estimates
            (``docs/cap.md``, *N:M*). The default, 3e-2, is the best of a grid on held-out train images of CIFAR-10
            (``benchmarks/bench_cap_scale.py damp``). ``0``: ``damp`` alone (the behaviour before issue 17.5).
    """

    sparsity_distribution: str = field(
        default="global",
        metadata={"help": "'global': one threshold across all target layers (the paper's); 'uniform': every layer pruned to the sparsity"},
    )
    fisher_dtype: str = field(
        default="float64",
        metadata={"help": "'float64' or 'float32': dtype of the stored Fisher blocks and of the elimination (inverses, replays and OBS updates are float64); float32 halves the memory, but its masks can differ from float64's at small damp"},
    )
    fisher_device: str | None = field(default=None, metadata={"help": "where the Fisher blocks live and the elimination runs ('cpu', 'cuda:1'...); default: the model's device"})
    blocks_in_parallel: int = field(
        default=-1,
        metadata={"help": "blocks inverted and eliminated together (memory ~ blocks_in_parallel * B^2 floats); -1: about 256 MiB on CPU, 2 GiB on GPU"},
    )
    max_fisher_memory_gb: float | None = field(
        default=None,
        metadata={"help": "if the Fisher blocks of all targets exceed this many GiB, layers are processed in groups that fit (layer streaming), each with its own gradient pass"},
    )
    nm_damp: float = field(
        default=3e-2,
        metadata={"help": "N:M masks only: extra dampening relative to the mean diagonal of each layer's Fisher (damp + nm_damp * mean(diag F)); 0: damp alone"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("sparsity_distribution", self.sparsity_distribution, ("global", "uniform"))
        self._check_choice("fisher_dtype", self.fisher_dtype, ("float32", "float64"))
        if self.blocks_in_parallel == 0 or self.blocks_in_parallel < -1:
            raise PruningConfigError(f"blocks_in_parallel must be ≥ 1, or -1 for automatic, got {self.blocks_in_parallel}.")
        if self.max_fisher_memory_gb is not None and not self.max_fisher_memory_gb > 0:
            raise PruningConfigError(f"max_fisher_memory_gb must be > 0 or None, got {self.max_fisher_memory_gb}.")
        if not (isinstance(self.nm_damp, (int, float)) and 0 <= self.nm_damp < float("inf")):
            raise PruningConfigError(f"nm_damp must be a finite number ≥ 0 (relative dampening of N:M masks, e.g. 3e-2), got {self.nm_damp}.")


@dataclass(kw_only=True)
class CAPConfig(BlockFisherConfig):
    """CAP (Correlation-Aware Pruning, Kuznedelev et al., NeurIPS 2023): block-diagonal empirical Fisher, exact
    greedy OBS elimination of the weights one by one inside every block (re-scoring and updating the inverse
    after each removal), and one global threshold on the blocks' cumulative losses.

    Defaults follow the paper's ViT/DeiT recipe: ``fisher_block_size=192``, ``damp=1e-8``, one recomputation;
    1,024 gradients (the recipe uses 4096).

    Example:

    ```python
    >>> import hf_sparsify
    >>> config = hf_sparsify.CAPConfig(sparsity=0.7, fisher_block_size=48, num_grads=16, grad_batch_size=8)
    >>> pruned = hf_sparsify.prune(model, config, calibration_data=calibration, image_processor=processor)
    >>> pruned.pruning_result.layers["vit.layers.0.mlp.fc1"]["fisher_block_size"]
    48
    ```
    """

    citation: ClassVar[Citation] = CAP_CITATION


@dataclass(kw_only=True)
class WoodFisherConfig(BlockFisherConfig):
    """WoodFisher: the same block Fisher as CAP, but saliencies ``w²/(2[F⁻¹]_jj)`` are computed once and all
    selected weights are removed at once with the summed single-weight OBS update.

    Example:

    ```python
    >>> config = hf_sparsify.WoodFisherConfig(sparsity=0.5, fisher_block_size=48, num_grads=16, grad_batch_size=8)
    >>> pruned = hf_sparsify.prune(model, config, calibration_data=calibration, image_processor=processor)
    ```
    """

    citation: ClassVar[Citation] = WOODFISHER_CITATION


@dataclass(kw_only=True)
class FastCAPConfig(GradientFisherConfig):
    """FastCAP, CAP's variant for large models: one shared ``B×B`` Fisher per layer, relative dampening, and a
    SparseGPT-style column-sequential OBS update (the updated weights are kept, unlike the released code).

    Args:
        sparsity_distribution: only ``"uniform"`` (the reference hard-codes it): every layer reaches ``sparsity``.
        damp: relative dampening, ``damp·mean(diag F)`` added to the diagonal (recipe: 1e-2).
        columns_per_step: columns whose mask is chosen together (``None``: all ``B`` at once, the reference's
            default); a multiple of M for N:M.

    Defaults follow the one-shot recipe: ``fisher_block_size=192``, ``num_grads=256``, ``damp=1e-2``.

    Example:

    ```python
    >>> config = hf_sparsify.FastCAPConfig(sparsity=0.5, num_grads=16, grad_batch_size=8)
    >>> pruned = hf_sparsify.prune(model, config, calibration_data=calibration, image_processor=processor)
    ```
    """

    citation: ClassVar[Citation] = FASTCAP_CITATION
    default_num_grads: ClassVar[int] = 256

    sparsity_distribution: str = field(default="uniform", metadata={"help": "only 'uniform' (the reference hard-codes it): every layer reaches the sparsity"})
    damp: float = field(default=1e-2, metadata={"help": "relative dampening: damp * mean(diag F) added to the diagonal (recipe: 1e-2)"})
    columns_per_step: int | None = field(
        default=None,
        metadata={"help": "columns whose mask is chosen together (default: all B at once, the reference's); a multiple of M for N:M"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity_distribution != "uniform":
            raise PruningConfigError(
                f"FastCAP prunes every layer to the same sparsity: sparsity_distribution must be 'uniform', got "
                f"{self.sparsity_distribution!r}. Use CAPConfig for a global distribution."
            )
        if self.columns_per_step is not None and self.columns_per_step < 1:
            raise PruningConfigError(f"columns_per_step must be ≥ 1 or None, got {self.columns_per_step}.")
        if self.nm is not None and self.columns_per_step is not None and self.columns_per_step % self.nm[1]:
            raise PruningConfigError(f"columns_per_step={self.columns_per_step} must be a multiple of M={self.nm[1]} for mask_structure={self.mask_structure!r}.")
