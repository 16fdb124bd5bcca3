"""Distillation: the loss formula, a toy problem where it decreases, DeiT's distillation token, and refused teachers."""

import pytest
import torch
import torch.nn.functional as F

from hf_sparsify import DistillationConfig, SparseTrainer
from hf_sparsify.trainer import DistillationError, distillation_loss, kd_loss
from tests.trainer.toy import ToyImages, tiny_vit, training_args


def test_kd_loss_against_the_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    T = 3.0
    p_t = F.softmax(t / T, dim=-1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, dim=-1))).sum(-1).mean() * T**2
    torch.testing.assert_close(kd_loss(s, t, T), expected)
    assert kd_loss(t, t, T).abs() < 1e-6
    torch.testing.assert_close(kd_loss(s, t, kind="hard"), F.cross_entropy(s, t.argmax(-1)))


def test_combined_loss_weights_and_parts():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3])
    config = DistillationConfig(temperature=2.0, distillation_weight=0.7)
    assert config.hard_label_weight == pytest.approx(0.3)
    loss, parts = distillation_loss({"logits": s}, t, labels, config)
    expected = 0.7 * kd_loss(s, t, 2.0) + 0.3 * F.cross_entropy(s, labels)
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"teacher_loss", "label_loss"}


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": 0}, "temperature"), ({"distillation_weight": -1}, "distillation_weight"), ({"distillation_type": "medium"}, "soft")],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(DistillationError, match=message):
        DistillationConfig(**kwargs)


def sharp_teacher(seed=7):
    teacher = tiny_vit(seed=seed)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)  # confident predictions: something to learn
    return teacher


def test_distillation_loss_decreases_on_a_toy_problem(tmp_path):
    student = tiny_vit(seed=1)
    args = training_args(tmp_path, max_steps=40, logging_steps=10, learning_rate=3e-3)
    trainer = SparseTrainer(
        model=student, args=args, train_dataset=ToyImages(128), teacher_model=sharp_teacher(),
        distillation=DistillationConfig(temperature=2.0, distillation_weight=1.0, hard_label_weight=0.0),
    )
    trainer.train()
    teacher_loss = [h["teacher_loss"] for h in trainer.state.log_history if "teacher_loss" in h]
    assert len(teacher_loss) == 4 and "label_loss" not in trainer.state.log_history[0]
    assert teacher_loss[-1] < 0.6 * teacher_loss[0], teacher_loss
    # the student now agrees with the teacher more often than chance
    batch = torch.stack([ToyImages(128, seed=9)[i]["pixel_values"] for i in range(128)])
    with torch.no_grad():
        agree = (student(pixel_values=batch).logits.argmax(-1) == trainer.teacher_model(pixel_values=batch).logits.argmax(-1)).float().mean()
    assert agree > 0.5


def _head_changes(tmp_path, distillation):
    student = tiny_vit(seed=1, cls="DeiTForImageClassificationWithTeacher")
    cls_before = student.cls_classifier.weight.detach().clone()
    dist_before = student.distillation_classifier.weight.detach().clone()
    trainer = SparseTrainer(
        model=student, args=training_args(tmp_path, max_steps=2, weight_decay=0.0), train_dataset=ToyImages(32),
        teacher_model=sharp_teacher(), distillation=distillation,
    )
    trainer.train()
    return (
        not torch.equal(student.cls_classifier.weight, cls_before),
        not torch.equal(student.distillation_classifier.weight, dist_before),
        trainer,
    )


def test_deit_distillation_token_learns_from_the_teacher_and_cls_token_from_labels(tmp_path):
    cls_moved, dist_moved, _ = _head_changes(tmp_path / "a", DistillationConfig(distillation_weight=1.0, hard_label_weight=0.0))
    assert dist_moved and not cls_moved
    cls_moved, dist_moved, trainer = _head_changes(tmp_path / "b", DistillationConfig(distillation_weight=0.0, hard_label_weight=1.0))
    assert cls_moved and not dist_moved
    # evaluation of the two-head student works (label names filled in, averaged logits)
    metrics = trainer.evaluate(ToyImages(16, seed=4))
    assert "eval_loss" in metrics


def test_teacher_with_another_label_space_is_refused(tmp_path):
    args = training_args(tmp_path, max_steps=1)
    with pytest.raises(DistillationError, match="teacher predicts 10 classes but the student 5"):
        SparseTrainer(model=tiny_vit(), args=args, train_dataset=ToyImages(8), teacher_model=tiny_vit(num_labels=10))
    student, teacher = tiny_vit(), tiny_vit()
    student.config.id2label = {i: name for i, name in enumerate(["cat", "dog", "car", "ship", "frog"])}
    teacher.config.id2label = {i: name for i, name in enumerate(["dog", "cat", "car", "ship", "frog"])}
    with pytest.raises(DistillationError, match="same class order"):
        SparseTrainer(model=student, args=args, train_dataset=ToyImages(8), teacher_model=teacher)
    with pytest.raises(DistillationError, match="without teacher_model"):
        SparseTrainer(model=tiny_vit(), args=args, train_dataset=ToyImages(8), distillation=DistillationConfig())


def test_distillation_loss_reads_the_heads_it_is_given():
    g = torch.Generator().manual_seed(2)
    first, second, t = (torch.randn(4, 5, generator=g) for _ in range(3))
    labels = torch.tensor([0, 1, 2, 3])
    config = DistillationConfig(temperature=2.0, distillation_weight=0.6)
    loss, _ = distillation_loss({"first": first, "second": second, "logits": (first + second) / 2}, t, labels, config, heads=("first", "second"))
    torch.testing.assert_close(loss, 0.6 * kd_loss(second, t, 2.0) + 0.4 * F.cross_entropy(first, labels))
    with pytest.raises(KeyError, match="'third'"):
        distillation_loss({"first": first}, t, labels, config, heads=("first", "third"))


# ------------------------------------------------------------------------------------------------ a second head
import transformers  # noqa: E402
from torch import nn  # noqa: E402

from hf_sparsify.adapters import ADAPTERS, ViTAdapter  # noqa: E402


class TwoHeadConfig(transformers.ViTConfig):
    model_type = "test_two_heads"


class TwoHeadViT(transformers.ViTForImageClassification):
    """A ViT with a second classifier on the CLS token, under its own output names (not DeiT's attributes)."""

    config_class = TwoHeadConfig

    def __init__(self, config):
        super().__init__(config)
        self.second_head = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pixel_values=None, labels=None, **kwargs):
        token = self.vit(pixel_values).last_hidden_state[:, 0]
        first, second = self.classifier(token), self.second_head(token)
        logits = (first + second) / 2
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits, "first_logits": first, "second_logits": second}


class TwoHeadAdapter(ViTAdapter):
    family = "test_two_heads"
    model_types = ("test_two_heads",)

    def distillation_outputs(self):
        return ("first_logits", "second_logits")


@pytest.fixture
def two_head_adapter():
    ADAPTERS.insert(0, TwoHeadAdapter)
    yield TwoHeadAdapter
    ADAPTERS.remove(TwoHeadAdapter)


@pytest.mark.parametrize("teacher_only", [True, False])
def test_the_adapter_tells_which_head_learns_from_the_teacher(tmp_path, two_head_adapter, teacher_only):
    torch.manual_seed(1)
    student = TwoHeadViT(TwoHeadConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4, num_labels=5))
    first, second = student.classifier.weight.detach().clone(), student.second_head.weight.detach().clone()
    weights = dict(distillation_weight=1.0, hard_label_weight=0.0) if teacher_only else dict(distillation_weight=0.0, hard_label_weight=1.0)
    trainer = SparseTrainer(
        model=student, args=training_args(tmp_path, max_steps=2, weight_decay=0.0), train_dataset=ToyImages(32),
        teacher_model=sharp_teacher(), distillation=DistillationConfig(**weights),
    )
    trainer.train()
    first_moved = not torch.equal(student.classifier.weight, first)
    second_moved = not torch.equal(student.second_head.weight, second)
    assert (first_moved, second_moved) == ((False, True) if teacher_only else (True, False))
