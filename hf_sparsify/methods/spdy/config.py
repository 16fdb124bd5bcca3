"""Configuration of SPDY (speed-up-constrained per-layer widths, Frantar & Alistarh, ICML 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...configuration import Citation, PruningConfig, PruningConfigError, parse_nm
from ...errors import HfSparsifyError

__all__ = [
    "COSTS",
    "DEFAULT_SPEEDUP",
    "GPU_ROUND_TO",
    "LATENCY_TABLES",
    "LOSSES",
    "STRUCTURED_BASE_METHODS",
    "UNSTRUCTURED_BASE_METHODS",
    "SPDYBaseMethodError",
    "SPDYConfig",
    "SPDYTargetError",
    "sparsity_levels",
]

#: what the budget is measured in: the profiler's measured latency, or MACs per image
COSTS = ("latency", "macs")
#: default multiple of kept MLP / channel widths when the model runs on a GPU (the base method's, 8, on a CPU)
GPU_ROUND_TO = 64
#: how latency tables are measured: each width's saving inside the whole model, or each block timed alone
LATENCY_TABLES = ("in_context", "isolated")
#: the calibration loss that scores a profile: "auto" is "labels" when the data has labels, else "kl"
LOSSES = ("auto", "labels", "kl")
#: base methods whose per-unit scores give every width of every group (a registered structured method)
STRUCTURED_BASE_METHODS = ("vbp", "sosp-h")
#: base methods whose one pass gives every layer at every sparsity (or 2:4): unstructured / N:M levels
UNSTRUCTURED_BASE_METHODS = ("magnitude", "cap", "fastcap")
#: the speed-up asked for when neither target_speedup nor target_cost is given
DEFAULT_SPEEDUP = 1.5


class SPDYTargetError(HfSparsifyError, ValueError):
    """The speed-up (or cost) target cannot be met by any choice of levels: the message gives the largest
    reachable speed-up."""


class SPDYBaseMethodError(HfSparsifyError, ValueError):
    """The base method cannot give per-layer variants (it is not a structured method with per-unit scores)."""


def sparsity_levels(num_levels: int = 42, min_sparsity: float = 0.4, max_sparsity: float = 0.99) -> list[float]:
    """The reference's unstructured grid as densities, dense first: ``1`` then ``num_levels − 1`` densities spaced
    geometrically from ``1 − min_sparsity`` down to ``1 − max_sparsity``,
    ``d_k = d_max·(d_min/d_max)^{k/(n−2)}`` (the reference: 42 levels, sparsities 0.40 … 0.99).

    ```python
    >>> from hf_sparsify.methods.spdy.config import sparsity_levels
    >>> [round(1 - d, 4) for d in sparsity_levels(42)][:4], round(1 - sparsity_levels(42)[-1], 4)
    ([0.0, 0.4, 0.4584, 0.5111], 0.99)
    ```
    """
    if num_levels < 3:
        raise ValueError(f"an unstructured grid needs at least 3 levels (dense and two densities), got {num_levels}")
    high, low = 1.0 - min_sparsity, 1.0 - max_sparsity
    steps = num_levels - 2
    return [1.0] + [high * (low / high) ** (k / steps) for k in range(steps + 1)]


CITATION = Citation(
    "SPDY",
    """@inproceedings{frantar2022spdy,
  title     = {{SPDY}: Accurate Pruning with Speedup Guarantees},
  author    = {Frantar, Elias and Alistarh, Dan},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {162},
  pages     = {6726--6743},
  year      = {2022},
  eprint    = {2201.13096},
  archivePrefix = {arXiv}
}""",
)


@dataclass(kw_only=True)
class SPDYConfig(PruningConfig):
    """SPDY: per-layer widths (or sparsities) that meet a speed-up target on the user's hardware with the least
    calibration loss.

    A base structured method (``"vbp"`` or ``"sosp-h"``) scores every unit once; its scores give each structure
    group (an MLP's neurons, an attention's heads, a ConvNeXt block's channels) at every width of a level grid (the
    layer-wise database, reusable for several targets through ``database``). Every group's time at every level
    comes from the latency profiler (``cost="latency"``, measured on this machine at ``profile_*`` settings,
    cached) or from MACs (``cost="macs"``). A dynamic programme picks one level per group minimising
    ``Σ c_l·(i/(n−1))²`` with the summed time within the budget, the time no group controls (embeddings, norms,
    head) included; a local search over the coefficients ``c_l`` keeps the profile whose stitched model has the
    lowest calibration loss (cross-entropy with labels, else KL divergence from the dense model). See docs/spdy.md.

    With an unstructured base (``"magnitude"``, ``"cap"``, ``"fastcap"``) the levels are per-layer sparsities
    instead (the reference's grid, ``mask_structure="unstructured"``) or dense / 2:4 (``mask_structure="2:4"``):
    one pass of the base method gives every layer at every level, and the model keeps its shapes (zeros in the
    weights). Nothing here runs unstructured sparsity faster, so their cost is ``cost="macs"`` (MACs × density);
    2:4 levels can also be timed (``cost="latency"``) on the ``semi-structured`` runtime (an Ampere-or-newer GPU).

    Args:
        target_speedup: dense time ÷ pruned time to reach, > 1 (default 1.5 when ``target_cost`` is not given).
        target_cost: instead of a speed-up, the absolute budget: seconds per batch (``cost="latency"``) or MACs
            per image (``cost="macs"``).
        base_method: ``"vbp"`` (MLP neurons / ConvNeXt channels by activation variance) or ``"sosp-h"`` (also
            attention heads, by second-order saliency): structure widths; ``"magnitude"``, ``"cap"`` or
            ``"fastcap"``: per-layer sparsity levels of every prunable layer (see ``mask_structure``).
        mask_structure: unstructured bases only: ``"unstructured"`` (levels: dense and ``num_levels − 1``
            densities spaced geometrically from ``1 − min_sparsity`` to ``1 − max_sparsity``) or ``"N:M"`` such as
            ``"2:4"`` (levels: dense and N:M per layer).
        min_sparsity, max_sparsity: unstructured levels: the sparsest and densest non-dense levels (the
            reference: 0.4 and 0.99).
        base_settings: extra settings of the base method's configuration (e.g. ``{"hessian": "gauss_newton"}``).
        cost: ``"latency"`` (the profiler's measured seconds) or ``"macs"``.
        num_levels: at most this many widths per group, dense included (the reference: 42); the allowed widths
            (multiples of ``round_to``) are thinned evenly to this many.
        round_to: structured bases: kept MLP / channel widths are multiples of this (heads count one by one);
            default: the base method's (8) on a CPU, 64 (:data:`GPU_ROUND_TO`) when ``profile_device`` (else the
            device the model prunes on) is a GPU.
        num_buckets: the time budget is cut into this many buckets in the dynamic programme (the reference: 10,000).
        num_random_starts: random coefficient vectors tried first (the reference: 100).
        search_steps: most candidate profiles the local search evaluates after the random starts.
        patience: trials without improvement before the search mutates one layer fewer (the reference: 100).
        mutation_fraction: the search starts by resampling this fraction of the layers at a time (the reference:
            0.1), with replacement, down to one layer.
        loss: ``"auto"``, ``"labels"`` (cross-entropy) or ``"kl"`` (KL divergence from the dense model's outputs;
            half the squared distance of a backbone's features).
        database: a folder for the layer-wise database: loaded when it holds one for this model and base method,
            else written after scoring, so that one scoring run serves several targets.
        profile_batch_size, profile_device, profile_dtype, profile_runtime: where and how the latency tables
            (and the measured speed-up) are measured (``hf-sparsify benchmark`` settings).
        latency_tables: ``"in_context"`` (default): every width's saving is timed inside the whole model (all the
            identical blocks of a class shrunk together, against the dense model in the same rounds), since blocks
            timed alone under-predict the savings; ``"isolated"``: each block timed alone (quicker to build).
        latency_cache: the profiler's JSON cache file; ``None``: the default cache folder (``$HF_SPARSIFY_CACHE``).
        measure_speedup: time the pruned model against the dense one at the end (``cost="latency"``).
        speedup_corrections: with ``cost="latency"``, ``measure_speedup`` and a ``target_speedup``: rounds that time
            the chosen profile's stitched model against the dense one and, when its measured speed-up is below the
            target or above it by more than ``speedup_tolerance`` (blocks timed alone do not add up exactly to the
            model), solve again for the predicted speed-up that the timings so far map to
            ``target·(1 + tolerance/2)`` (the gap's ratio after one timing, a secant after two; the search's
            coefficients kept); the run ends on a timed profile. ``0`` disables.
        speedup_tolerance: how far above the target a measured speed-up may be before a correction prunes less.

    Example:

    ```python
    >>> import hf_sparsify
    >>> config = hf_sparsify.SPDYConfig(target_speedup=1.3, cost="macs", num_levels=8, num_random_starts=4, search_steps=8,
    ...                                 patience=4, num_calibration_samples=32)
    >>> pruned = hf_sparsify.prune(model, config, calibration, image_processor=processor)
    >>> spdy = pruned.pruning_result.info["spdy"]
    >>> spdy["predicted_speedup"] >= 1.3, spdy["measured_speedup"] >= 1.3
    (True, True)
    ```
    """

    target_field: ClassVar[str] = "target_speedup"
    target_interpolable: ClassVar[bool] = False
    citation: ClassVar[Citation] = CITATION
    default_num_calibration_samples: ClassVar[int] = 256
    demo_settings: ClassVar[dict[str, Any]] = {"target_speedup": 1.4, "cost": "macs", "num_random_starts": 20, "search_steps": 100, "patience": 20, "num_calibration_samples": 128}
    quick_settings: ClassVar[dict[str, Any]] = {
        "target_speedup": 1.15,
        "cost": "macs",
        "round_to": 1,
        "num_levels": 6,
        "num_random_starts": 2,
        "search_steps": 3,
        "patience": 2,
        "num_calibration_samples": 8,
        "calibration_batch_size": 4,
    }
    label_free_settings: ClassVar[dict[str, Any] | None] = {}

    target_speedup: float | None = field(default=None, metadata={"help": "dense time ÷ pruned time to reach, > 1 (default 1.5 unless target_cost is given)"})
    target_cost: float | None = field(
        default=None, metadata={"help": "absolute budget instead of a speed-up: seconds per batch (cost='latency') or MACs per image (cost='macs')"}
    )
    base_method: str = field(
        default="vbp",
        metadata={"help": "method giving every layer's variants: 'vbp' or 'sosp-h' (structure widths), 'magnitude', 'cap' or 'fastcap' (per-layer sparsity levels, see mask_structure)"},
    )
    mask_structure: str = field(
        default="unstructured",
        metadata={"help": "unstructured bases: 'unstructured' (levels: dense + num_levels-1 densities between min_sparsity and max_sparsity) or 'N:M' such as '2:4' (levels: dense or N:M per layer)"},
    )
    min_sparsity: float = field(default=0.4, metadata={"help": "unstructured levels: the least sparsity below dense (the reference: 0.4)"})
    max_sparsity: float = field(default=0.99, metadata={"help": "unstructured levels: the largest sparsity (the reference: 0.99)"})
    base_settings: dict | None = field(default=None, metadata={"help": "extra settings of the base method's configuration, as JSON"})
    cost: str = field(default="latency", metadata={"help": "'latency' (measured on this machine, cached; see latency_tables) or 'macs'"})
    num_levels: int = field(default=42, metadata={"help": "most widths per group, dense included (the reference: 42)"})
    round_to: int | None = field(default=None, metadata={"help": "structured bases: kept MLP / channel widths are multiples of this; default: the base method's (8), 64 when profile_device (else the model) is a GPU"})
    num_buckets: int = field(default=10_000, metadata={"help": "time buckets of the dynamic programme's budget (the reference: 10,000)"})
    num_random_starts: int = field(default=100, metadata={"help": "random coefficient vectors tried before the local search (the reference: 100)"})
    search_steps: int = field(default=1000, metadata={"help": "most candidate profiles the local search evaluates after the random starts"})
    patience: int = field(default=100, metadata={"help": "trials without improvement before the search mutates one layer fewer (the reference: 100)"})
    mutation_fraction: float = field(default=0.1, metadata={"help": "fraction of the layers resampled at a time at the start of the local search (the reference: 0.1)"})
    loss: str = field(default="auto", metadata={"help": "calibration loss of a profile: 'auto' (labels if present, else kl), 'labels' or 'kl' (to the dense model)"})
    database: str | None = field(default=None, metadata={"help": "folder of the layer-wise database: loaded if it matches, else written (one scoring run, several targets)"})
    profile_batch_size: int = field(default=1, metadata={"help": "batch size the latency tables are measured at"})
    profile_device: str | None = field(default=None, metadata={"help": "device the latency tables are measured on (default: where the model prunes)"})
    profile_dtype: str | None = field(default=None, metadata={"help": "dtype the latency tables are measured in (default: the model's)"})
    profile_runtime: str = field(default="eager", metadata={"help": "runtime the latency tables are measured in: 'eager', 'compile', 'onnxruntime', 'semi-structured'"})
    latency_tables: str = field(
        default="in_context",
        metadata={"help": "how cost='latency' tables are measured: 'in_context' (each width's saving timed inside the whole model) or 'isolated' (each block timed alone: faster to build, under-predicts savings)"},
    )
    latency_cache: str | None = field(default=None, metadata={"help": "the profiler's JSON cache file (default: one per setting in the default cache folder)"})
    measure_speedup: bool = field(default=True, metadata={"help": "time the pruned model against the dense one at the end (cost='latency')"})
    speedup_corrections: int = field(
        default=5,
        metadata={"help": "rounds that time the chosen widths and, if below target_speedup or above it by more than speedup_tolerance, solve again for the target scaled by the predicted/measured gap (cost='latency')"},
    )
    speedup_tolerance: float = field(default=0.05, metadata={"help": "how far above the target a measured speed-up may be before a correction prunes less"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_speedup is not None and self.target_cost is not None:
            raise PruningConfigError("SPDYConfig takes target_speedup or target_cost, not both.")
        if self.target_speedup is None and self.target_cost is None:
            self.target_speedup = DEFAULT_SPEEDUP
        if self.target_speedup is not None and not self.target_speedup > 1:
            raise PruningConfigError(f"target_speedup must be > 1 (dense time ÷ pruned time), got {self.target_speedup}; for example 1.5.")
        if self.target_cost is not None and not self.target_cost > 0:
            raise PruningConfigError(f"target_cost must be > 0 (seconds per batch or MACs per image), got {self.target_cost}.")
        self._check_choice("cost", self.cost, COSTS)
        self._check_choice("loss", self.loss, LOSSES)
        self._check_choice("latency_tables", self.latency_tables, LATENCY_TABLES)
        if not isinstance(self.base_method, str) or not self.base_method:
            raise PruningConfigError(f"base_method must name a method, one of {list(STRUCTURED_BASE_METHODS + UNSTRUCTURED_BASE_METHODS)}.")
        self._check_levels()
        for name, low in (("num_levels", 2), ("num_buckets", 10), ("num_random_starts", 1), ("search_steps", 0), ("patience", 1), ("profile_batch_size", 1), ("speedup_corrections", 0)):
            if getattr(self, name) < low:
                raise PruningConfigError(f"{name} must be ≥ {low}, got {getattr(self, name)}.")
        if self.round_to is not None and self.round_to < 1:
            raise PruningConfigError(f"round_to must be ≥ 1 (1 disables rounding), got {self.round_to}.")
        if not 0 <= self.speedup_tolerance < 1:
            raise PruningConfigError(f"speedup_tolerance must be in [0, 1), got {self.speedup_tolerance}.")
        if not 0 < self.mutation_fraction <= 1:
            raise PruningConfigError(f"mutation_fraction must be in (0, 1], got {self.mutation_fraction}.")

    def _check_levels(self) -> None:
        """The level settings against the kind of base method; latency with levels no runtime here exploits is
        refused before any work."""
        if not self.unstructured_levels():
            changed = [f"{name}={getattr(self, name)!r}" for name, default in (("mask_structure", "unstructured"), ("min_sparsity", 0.4), ("max_sparsity", 0.99)) if getattr(self, name) != default]
            if changed:
                raise PruningConfigError(
                    f"{', '.join(changed)}: sparsity levels need an unstructured base method ({', '.join(UNSTRUCTURED_BASE_METHODS)}); "
                    f"base_method={self.base_method!r} gives structure widths (set num_levels / round_to instead)."
                )
            return
        if self.round_to is not None:
            raise PruningConfigError(f"round_to applies to structure widths; base_method={self.base_method!r} gives sparsity levels: leave round_to unset.")
        if self.mask_structure != "unstructured":
            parse_nm(self.mask_structure)  # PruningConfigError naming the problem
        else:
            if not 0 < self.min_sparsity < self.max_sparsity < 1:
                raise PruningConfigError(
                    f"min_sparsity={self.min_sparsity} and max_sparsity={self.max_sparsity} must satisfy 0 < min_sparsity < max_sparsity < 1 "
                    "(the reference: 0.4 and 0.99)."
                )
            if self.num_levels < 3:
                raise PruningConfigError(f"num_levels must be ≥ 3 for unstructured levels (dense and two sparsities), got {self.num_levels}.")
        if self.cost == "latency":
            if self.mask_structure == "unstructured":
                raise PruningConfigError(
                    "cost='latency' cannot rank unstructured sparsity levels: no runtime here runs an unstructured-sparse layer faster "
                    "than dense (its measured time would not change with the level). Use cost='macs' (MACs × density, the OBC/SPDY "
                    "FLOPs constraint), or mask_structure='2:4' with profile_runtime='semi-structured' on an Ampere-or-newer GPU."
                )
            if self.mask_structure != "2:4" or self.profile_runtime != "semi-structured":
                raise PruningConfigError(
                    f"cost='latency' with mask_structure={self.mask_structure!r} on profile_runtime={self.profile_runtime!r}: only the "
                    "'semi-structured' runtime (an Ampere-or-newer NVIDIA GPU, fp16/bf16) runs 2:4 layers faster, so these levels would "
                    "all time as dense. Use cost='macs', or mask_structure='2:4' with profile_runtime='semi-structured' on such a GPU."
                )

    def unstructured_levels(self) -> bool:
        """Whether the levels are per-layer sparsities (an unstructured base method) rather than structure widths."""
        return self.base_method in UNSTRUCTURED_BASE_METHODS

    def sparsity_levels(self) -> list[float | str]:
        """The levels of every layer for an unstructured base, dense first: densities (``1.0`` = dense), or
        ``[1.0, "N:M"]``."""
        if self.mask_structure != "unstructured":
            return [1.0, self.mask_structure]
        return sparsity_levels(self.num_levels, self.min_sparsity, self.max_sparsity)

    def needs_labels(self) -> bool:
        return self.loss == "labels"

    def calibration_images(self) -> int:
        return self.num_calibration_samples or self.default_num_calibration_samples
