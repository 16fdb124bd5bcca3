"""The gradient engine: counts, requires_grad, extra leaves, double backward, several observers, every dtype
(the loss keeps its graph in bf16/fp16/fp64 models; float16 gradients are loss-scaled), the label-free losses."""

import copy

import pytest
import torch
from torch import nn

from hf_sparsify.observers.gradients import GradientError, GradientObserver, make_loss, run_gradients
from tests.conftest import make_tiny_model, tiny_batches


class _Grads(GradientObserver):
    """Keeps every gradient of the given tensors (float64), for comparisons."""

    def __init__(self, tensors):
        self.tensors, self.grads, self.indices, self.dtypes = list(tensors), [], [], []

    def leaves(self):
        return self.tensors

    def observe(self, step):
        grads = step.grad(self.tensors)
        self.dtypes.append([g.dtype for g in grads])
        self.grads.append([g.double() for g in grads])
        self.indices.append(step.index)


def _explicit_grads(model, tensors, batches, loss="labels"):
    fn = make_loss(loss)
    out = []
    for index, batch in enumerate(batches):
        model.zero_grad()
        with torch.enable_grad():
            grads = torch.autograd.grad(fn(model, batch, index), tensors)
        out.append([g.double() for g in grads])
    return out


def test_counts_gradients_and_restores_flags():
    model = make_tiny_model("vit")
    model.vit.embeddings.cls_token.requires_grad_(False)
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    weight = model.vit.layers[0].mlp.fc1.weight
    observer = _Grads([weight])
    batches = tiny_batches(model, num_batches=3, batch=2)
    with torch.no_grad():  # the pruners run under no_grad: the engine enables it for the loss
        run = run_gradients(model, batches, observer)
    assert (run.num_batches, run.num_images) == (3, 6)
    assert observer.indices == [0, 1, 2] and "gradients" in run.timings
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    for got, expected in zip(observer.grads, _explicit_grads(model, [weight], batches)):
        torch.testing.assert_close(got[0], expected[0])


def test_gradient_of_an_extra_leaf_gate():
    # SOSP's gates: a leaf tensor that scales a layer's output; its gradient is Σ (∂L/∂y) ⊙ y over the batch
    model = make_tiny_model("vit")
    fc1 = model.vit.layers[0].mlp.fc1
    gate = torch.ones(fc1.out_features, dtype=torch.float32)
    handle = fc1.register_forward_hook(lambda module, inputs, output: output * gate)
    observer = _Grads([gate])
    batches = tiny_batches(model, num_batches=2)
    run_gradients(model, batches, observer)
    assert not gate.requires_grad  # restored
    outputs = {}
    fc1.register_forward_hook(lambda module, inputs, output: outputs.__setitem__("y", output))
    for got, batch in zip(observer.grads, batches):
        with torch.enable_grad():
            loss = model(**batch).loss
            (dy,) = torch.autograd.grad(loss, outputs["y"])
        expected = (dy * outputs["y"]).sum(dim=(0, 1)).double()
        torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-8)
    handle.remove()


class _HessianVector(GradientObserver):
    def __init__(self, weight, vector):
        self.weight, self.vector, self.products = weight, vector, []

    def leaves(self):
        return [self.weight]

    def observe(self, step):
        (grad,) = step.grad([self.weight], create_graph=True)
        (hv,) = torch.autograd.grad((grad * self.vector).sum(), [self.weight])
        self.products.append(hv.double())


def test_hessian_vector_products_by_double_backward():
    model = make_tiny_model("vit").double()
    weight = model.vit.layers[1].mlp.fc2.weight
    vector = torch.randn(weight.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    observer = _HessianVector(weight, vector)
    batches = tiny_batches(model, num_batches=2)
    run_gradients(model, batches, observer, loss="kl")
    for product, batch in zip(observer.products, batches):
        reference = model(pixel_values=batch["pixel_values"]).logits.detach()

        def kl(w):
            logits = torch.func.functional_call(model, {"vit.layers.1.mlp.fc2.weight": w}, (batch["pixel_values"].double(),)).logits
            return nn.functional.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="batchmean")

        _, expected = torch.autograd.functional.hvp(kl, weight.detach(), vector)
        torch.testing.assert_close(product, expected, rtol=1e-7, atol=1e-12)
        assert product.abs().sum() > 0


def test_kl_loss_has_zero_gradient_where_it_starts():
    model = make_tiny_model("vit")
    weight = model.vit.layers[0].mlp.fc1.weight
    observer = _Grads([weight])
    run_gradients(model, tiny_batches(model, 1), observer, loss="kl")
    assert observer.grads[0][0].abs().max() < 1e-6


def test_several_observers_share_one_loss():
    model = make_tiny_model("vit")
    a, b = model.vit.layers[0].mlp.fc1.weight, model.vit.layers[1].mlp.fc2.weight
    first, second = _Grads([a]), _Grads([b])
    batches = tiny_batches(model, 2)
    run_gradients(model, batches, [first, second])
    explicit = _explicit_grads(model, [a, b], batches)
    for got_a, got_b, (expected_a, expected_b) in zip(first.grads, second.grads, explicit):
        torch.testing.assert_close(got_a[0], expected_a)
        torch.testing.assert_close(got_b[0], expected_b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("loss", ["labels", "features"])
def test_every_model_dtype_keeps_the_loss_graph(dtype, loss):
    # issue 12.1: the loss was cast outside enable_grad, so any non-float32 model failed under no_grad
    model = make_tiny_model("vit").to(dtype)
    weight = model.vit.layers[0].mlp.fc1.weight
    observer = _Grads([weight])
    batches = tiny_batches(model, 2)  # float32 pixel values: cast to the model's dtype by the engine
    with torch.no_grad():
        run = run_gradients(model, batches, observer, loss=loss)
    assert run.num_batches == 2
    expected_dtype = torch.float64 if dtype == torch.float64 else (torch.float32 if dtype == torch.float16 else dtype)
    assert observer.dtypes[0] == [expected_dtype]
    reference = make_tiny_model("vit").to(dtype).double()  # the same (rounded) weights, in float64
    expected = _explicit_grads(reference, [reference.vit.layers[0].mlp.fc1.weight], [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in batches], loss)
    tolerance = {torch.float64: 1e-10, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for got, want in zip(observer.grads, expected):
        assert (got[0] - want[0]).norm() / want[0].norm() < tolerance


def test_float16_gradients_are_loss_scaled_against_underflow_and_overflow():
    model = make_tiny_model("vit").half()
    weight = model.vit.layers[0].mlp.fc1.weight
    reference = copy.deepcopy(model).double()
    batches = tiny_batches(model, 3)
    for factor in (1e-5, 1e3):  # gradients far below float16's 6e-8, then scaled gradients above its 65504
        loss = lambda m, batch: factor * m(**batch).loss  # noqa: E731
        observer = _Grads([weight])
        run_gradients(model, batches, observer, loss=loss)
        expected = _explicit_grads(reference, [reference.vit.layers[0].mlp.fc1.weight], [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in batches], loss)
        for got, want in zip(observer.grads, expected):
            assert torch.isfinite(got[0]).all()
            assert (got[0] - want[0]).norm() / want[0].norm() < 2e-2
    # what the scaling avoids: without it, most float16 gradients of the small loss underflow to zero
    with torch.enable_grad():
        weight.requires_grad_(True)
        small = 1e-5 * model(**{k: v.half() if v.is_floating_point() else v for k, v in batches[0].items()}).loss
        underflow = (torch.autograd.grad(small, weight)[0] == 0).float().mean()
        weight.requires_grad_(False)
    assert underflow > 0.5


def test_bf16_autocast_on_every_model_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        model = make_tiny_model("vit").to(dtype)
        observer = _Grads([model.vit.layers[0].mlp.fc1.weight])
        run_gradients(model, tiny_batches(model, 1), observer, mixed_precision="bf16")
        assert torch.isfinite(observer.grads[0][0]).all() and observer.grads[0][0].abs().sum() > 0


def test_a_loss_that_does_not_reach_the_leaves_is_named():
    model = make_tiny_model("vit")
    observer = _Grads([model.vit.layers[0].mlp.fc1.weight])
    with pytest.raises(GradientError, match="does not depend on the observed weights"):
        run_gradients(model, tiny_batches(model, 1), observer, loss=lambda m, b: torch.zeros(()))
    with pytest.raises(GradientError, match="must be a scalar tensor"):
        run_gradients(model, tiny_batches(model, 1), observer, loss=lambda m, b: m(**b).logits)
    with pytest.raises(GradientError, match="no batch"):
        run_gradients(model, [], observer)


def test_each_process_takes_its_share_and_the_bar_knows_how_many():
    from types import SimpleNamespace

    from hf_sparsify.observers.gradients import _share

    batches = [{"pixel_values": torch.zeros(1, 3, 2, 2)} for _ in range(5)]
    stream, total = _share(batches, SimpleNamespace(process_index=1, num_processes=2))
    assert [i for i, _ in stream] == [1, 3] and total == 2
    stream, total = _share(iter(batches), SimpleNamespace(process_index=0, num_processes=1))
    assert len(list(stream)) == 5 and total is None  # a generator has no length: no total
