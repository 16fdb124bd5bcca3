"""Knowledge distillation from the dense model: the loss and its settings.

The training loss is ``hard_label_weight · CE(student, labels) + distillation_weight · T² · KL(teacher_T ‖ student_T)``
where ``_T`` marks softmax at temperature ``T`` (Hinton et al., 2015; the ``T²`` keeps gradient scales comparable
across temperatures). When the student is a ``DeiTForImageClassificationWithTeacher``, the hard-label loss trains
the class-token head and the distillation term trains the distillation-token head, as in DeiT (Touvron et al.,
2021); ``distillation_type="hard"`` uses DeiT's hard distillation, the cross-entropy with the teacher's argmax.

``SparseTrainer(..., teacher_model=dense, distillation=DistillationConfig(temperature=2.0))`` trains with it; the
loss alone:

```python
>>> from hf_sparsify import DistillationConfig
>>> from hf_sparsify.trainer import distillation_loss
>>> student, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 0.5, -1.0]])
>>> loss, parts = distillation_loss({"logits": student}, teacher, torch.tensor([0]), DistillationConfig(temperature=2.0))
>>> {name: round(float(value), 4) for name, value in parts.items()}
{'teacher_loss': 0.2329, 'label_loss': 0.1698}
```
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HfSparsifyError

__all__ = ["DistillationConfig", "DistillationError", "LossParts", "check_teacher", "distillation_loss", "kd_loss", "label_logits"]


class DistillationError(HfSparsifyError, ValueError):
    """The teacher cannot teach this student (different label space) or the settings are invalid."""


@dataclass(kw_only=True)
class DistillationConfig:
    """Settings of the distillation loss.

    Args:
        temperature: softmax temperature ``T`` of the KL term (> 0).
        distillation_weight: weight of the teacher term (≥ 0).
        hard_label_weight: weight of the cross-entropy with the dataset labels (≥ 0); default
            ``1 - distillation_weight`` when that is non-negative, else 0.
        distillation_type: ``"soft"`` (KL at temperature ``T``) or ``"hard"`` (cross-entropy with the teacher's
            argmax, DeiT's hard distillation).
    """

    temperature: float = 2.0
    distillation_weight: float = 0.5
    hard_label_weight: float | None = None
    distillation_type: str = "soft"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise DistillationError(f"temperature must be > 0, got {self.temperature}.")
        if self.distillation_weight < 0:
            raise DistillationError(f"distillation_weight must be ≥ 0, got {self.distillation_weight}.")
        if self.hard_label_weight is None:
            self.hard_label_weight = max(0.0, 1.0 - self.distillation_weight)
        if self.hard_label_weight < 0:
            raise DistillationError(f"hard_label_weight must be ≥ 0, got {self.hard_label_weight}.")
        if self.distillation_type not in ("soft", "hard"):
            raise DistillationError(f"distillation_type={self.distillation_type!r} is not 'soft' or 'hard'.")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """A one-line human description (used in model cards)."""
        term = f"KL at T={self.temperature:g}" if self.distillation_type == "soft" else "cross-entropy with the teacher's argmax"
        return f"{term} (weight {self.distillation_weight:g}) + labels (weight {self.hard_label_weight:g})"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, kind: str = "soft") -> torch.Tensor:
    """The teacher term: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` averaged over the batch (``"soft"``), or the
    cross-entropy with the teacher's argmax (``"hard"``). Computed in float32."""
    s = student_logits.float()
    t = teacher_logits.detach().float()
    if kind == "hard":
        return F.cross_entropy(s, t.argmax(dim=-1))
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def _logits(output, name: str) -> torch.Tensor:
    value = getattr(output, name, None)
    if value is None and isinstance(output, dict):
        value = output.get(name)
    if value is None:
        raise KeyError(f"the model's output has no {name!r}: the model's adapter named it as a logits output.")
    return value


def label_logits(output, heads: tuple[str, str] | None = None) -> torch.Tensor:
    """The logits the label loss trains: the class-token head's (``heads[0]``) when the model has a second,
    distillation head, else ``logits``."""
    return _logits(output, heads[0] if heads else "logits")


def distillation_loss(
    student_output,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    config: DistillationConfig,
    *,
    label_smoothing: float = 0.0,
    heads: tuple[str, str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The combined loss and its parts (``{"teacher_loss", "label_loss"}``, detached).

    Args:
        student_output: the student's model output (or a dict of its logits).
        teacher_logits: the teacher's logits for the same batch.
        labels: the dataset labels (``None``: the teacher term only).
        config: the loss settings.
        label_smoothing: of the label cross-entropy.
        heads: ``(class-token logits key, distillation-token logits key)`` when the student has a second head
            trained from the teacher, as its adapter's ``distillation_outputs()`` tells (DeiT with teacher:
            ``("cls_logits", "distillation_logits")``): the label loss goes to the first, the teacher term to the
            second. ``None``: both terms train ``logits``.
    """
    if heads:
        label_head, distill_head = _logits(student_output, heads[0]), _logits(student_output, heads[1])
    else:
        label_head = distill_head = _logits(student_output, "logits")
    parts: dict[str, torch.Tensor] = {}
    teacher_term = kd_loss(distill_head, teacher_logits, config.temperature, config.distillation_type)
    parts["teacher_loss"] = teacher_term.detach()
    loss = config.distillation_weight * teacher_term
    if labels is not None and config.hard_label_weight > 0:
        label_term = F.cross_entropy(label_head.float(), labels, label_smoothing=label_smoothing)
        parts["label_loss"] = label_term.detach()
        loss = loss + config.hard_label_weight * label_term
    return loss, parts


class LossParts:
    """Running sums of the loss parts (``teacher_loss``, ``label_loss``) between two training logs.

    ```python
    >>> from hf_sparsify.trainer.distillation import LossParts
    >>> meter = LossParts()
    >>> meter.add({"teacher_loss": torch.tensor(1.0)}); meter.add({"teacher_loss": torch.tensor(3.0)})
    >>> meter.averages()
    {'teacher_loss': 2.0}
    >>> meter.averages()          # read once: the sums restart
    {}
    ```
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        """Add one batch's parts."""
        for key, value in parts.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.detach().float()
        self._count += 1

    def averages(self, reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The mean of each part over the batches added since the last call (then the sums restart);
        ``reduce_mean`` averages a tensor over the processes (``accelerator.reduce(t, reduction="mean")``)."""
        out: dict[str, float] = {}
        if self._count:
            for key in sorted(self._sums):
                value = torch.as_tensor(self._sums[key], dtype=torch.float32) / self._count
                out[key] = float((reduce_mean(value) if reduce_mean is not None else value).item())
        self.reset()
        return out


def _label_names(config) -> dict[int, str] | None:
    id2label = getattr(config, "id2label", None) or {}
    names = {int(k): str(v) for k, v in id2label.items()}
    if not names or all(v == f"LABEL_{k}" for k, v in names.items()):
        return None  # transformers' placeholder names carry no meaning
    return names


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher whose label space differs from the student's (number of labels or label names)."""
    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if s_cfg is None or t_cfg is None:
        return
    s_n, t_n = getattr(s_cfg, "num_labels", None), getattr(t_cfg, "num_labels", None)
    if s_n is not None and t_n is not None and s_n != t_n:
        raise DistillationError(
            f"the teacher predicts {t_n} classes but the student {s_n}: distillation compares their class "
            "probabilities, so both must share one label space. Use the dense model the student was pruned from "
            "(or finetune the teacher on the student's labels first)."
        )
    s_names, t_names = _label_names(s_cfg), _label_names(t_cfg)
    if s_names is not None and t_names is not None and s_names != t_names:
        diff = [k for k in sorted(s_names) if s_names.get(k) != t_names.get(k)][:3]
        examples = ", ".join(f"{k}: student {s_names.get(k)!r} vs teacher {t_names.get(k)!r}" for k in diff)
        raise DistillationError(
            f"the teacher's labels differ from the student's ({examples}): both must use the same class order "
            "(config.id2label)."
        )
