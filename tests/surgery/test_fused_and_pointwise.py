"""Structure groups whose producer is fused (timm's ``qkv``: a head owns three row ranges) and whose layers are 1×1
convolutions (timm's ConvNeXt with ``conv_mlp``): surgery, the bias fold, costs and activation moments, on small
stand-alone modules shaped like timm's (they run without timm; tests/adapters/test_timm.py runs timm's own)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_sparsify.adapters import ATTENTION_HEAD, CONV_CHANNEL, MLP_NEURON, StructureGroup
from hf_sparsify.observers import collect_activation_moments
from hf_sparsify.structured import MacsCost, ParamsCost, count_macs, count_params
from hf_sparsify.surgery import fold_into_bias, keep_units


class FusedAttention(nn.Module):
    """timm's ``Attention``: one ``qkv`` Linear (query rows, then key rows, then value rows), ``proj``, and the
    ``num_heads`` / ``attn_dim`` attributes its forward reads."""

    def __init__(self, dim: int = 12, num_heads: int = 4, head_dim: int = 3):
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = num_heads, head_dim, num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.attn_dim))


class PointwiseMlp(nn.Module):
    """timm ConvNeXt's MLP with ``conv_mlp``: 1×1 convolutions on NCHW maps, then LayerScale."""

    def __init__(self, dim: int = 6, hidden: int = 10):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))) * self.gamma.reshape(1, -1, 1, 1)


class Toy(nn.Module):
    """A model with an image input, as hf_sparsify's cost and moment helpers expect: patches → attention → MLP."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type=None, image_size=8, num_channels=3)
        self.embed = nn.Conv2d(3, 12, 2, stride=2)
        self.attn = FusedAttention()
        self.mlp = PointwiseMlp(12, 20)

    def forward(self, pixel_values):
        x = self.embed(pixel_values)  # (B, 12, 4, 4)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(tokens)
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        return SimpleNamespace(logits=x + self.mlp(x))


def head_group(model) -> StructureGroup:
    attn = model.attn
    return StructureGroup(
        name="attn", kind=ATTENTION_HEAD, block="", block_index=0, producers=["attn.qkv"], consumers=["attn.proj"],
        num_units=attn.num_heads, unit_size=attn.head_dim, observe="attn.proj", count_attribute="num_heads",
        size_attributes={"attn_dim": attn.head_dim}, producer_sections={"attn.qkv": 3},
    )


def channel_group(model) -> StructureGroup:
    return StructureGroup(
        name="mlp", kind=CONV_CHANNEL, block="", block_index=0, producers=["mlp.fc1"], consumers=["mlp.fc2"],
        num_units=model.mlp.fc1.out_channels, observe="mlp.fc2", layer_scale="mlp.gamma",
    )


def make_toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def images(seed: int = 0, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_producer_rows_of_a_fused_qkv_are_three_sections_per_head():
    group = head_group(make_toy())  # 4 heads of 3 rows: attn_dim 12
    assert group.sections("attn.qkv") == 3 and group.sections("attn.proj") == 1 and group.rows_per_unit("attn.qkv") == 9
    assert group.producer_rows("attn.qkv", torch.tensor([1])).tolist() == [3, 4, 5, 15, 16, 17, 27, 28, 29]
    assert group.unit_rows(torch.tensor([1])).tolist() == [3, 4, 5]  # the proj columns: one range


def test_removing_heads_of_a_fused_qkv_keeps_the_kept_heads_rows_and_equals_zeroing_their_outputs():
    model, reference = make_toy(), make_toy()
    x = images()
    qkv = model.attn.qkv.weight.detach().clone()
    keep = torch.tensor([0, 2])
    keep_units(model, head_group(model), keep)
    attn = model.attn
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (2, 6, 18, 6)
    rows = torch.cat([torch.arange(s * 12 + h * 3, s * 12 + h * 3 + 3) for s in range(3) for h in (0, 2)])
    assert torch.equal(attn.qkv.weight, qkv[rows])
    with torch.no_grad():  # the reference: heads 1 and 3 write nothing
        reference.attn.proj.weight[:, [3, 4, 5, 9, 10, 11]] = 0
    torch.testing.assert_close(model(pixel_values=x).logits, reference(pixel_values=x).logits, rtol=1e-6, atol=1e-6)


def test_removing_pointwise_conv_channels_equals_zeroing_them_and_the_fold_is_exact():
    model, reference = make_toy(), make_toy()
    x = images()
    group = channel_group(model)
    removed = torch.tensor([1, 4, 5, 11])
    keep = torch.tensor(sorted(set(range(20)) - set(removed.tolist())))
    values = torch.randn(20)

    def replace(module, inputs):  # the reference: removed channels output a constant
        h = inputs[0].clone()
        h[:, removed] = values[removed].reshape(1, -1, 1, 1)
        return (h,)

    reference.mlp.fc2.register_forward_pre_hook(replace)
    fold_into_bias(model, group, removed, values[removed])
    keep_units(model, group, keep)
    assert isinstance(model.mlp.fc1, nn.Conv2d) and model.mlp.fc1.out_channels == 16 and model.mlp.fc2.in_channels == 16
    torch.testing.assert_close(model(pixel_values=x).logits, reference(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def test_bias_fold_refuses_a_convolution_wider_than_one_pixel():
    model = make_toy()
    model.mlp.fc2 = nn.Conv2d(20, 12, 3, padding=1)
    with pytest.raises(TypeError, match="1x1 nn.Conv2d"):
        fold_into_bias(model, channel_group(model), torch.tensor([0]), torch.tensor([1.0]))


@pytest.mark.parametrize("cost", [MacsCost({"attn.qkv": 3}), ParamsCost()], ids=["macs", "parameters"])
def test_unit_costs_equal_the_measured_cost_of_removing_units(cost):
    model = make_toy()
    groups = [head_group(model), channel_group(model)]
    unit = cost.unit_costs(model, groups)
    measure = (lambda m: count_macs(m, {"attn.qkv": 3})["total"]) if isinstance(cost, MacsCost) else count_params
    before = measure(model)
    keep_units(model, groups[0], torch.tensor([0, 3]))  # 2 heads removed
    keep_units(model, groups[1], torch.arange(15))  # 5 channels removed
    assert before - measure(model) == 2 * unit[0] + 5 * unit[1]


def test_attention_products_count_the_query_section_of_a_fused_projection():
    model = make_toy()
    fused = count_macs(model, {"attn.qkv": 3})["per_module"]["attn.qkv.scores"]
    assert fused == 2 * 16 * 16 * 12  # 16 tokens, attn_dim 12: not the 36 outputs of qkv
    assert count_macs(model, ["attn.qkv"])["per_module"]["attn.qkv.scores"] == 3 * fused  # a list: one section each


def test_moments_of_a_pointwise_convolution_input_are_per_channel():
    model = make_toy()
    batches = [{"pixel_values": images(seed)} for seed in range(2)]
    seen = []
    handle = model.mlp.fc2.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))
    moments = collect_activation_moments(model, {"mlp": "mlp.fc2"}, batches, disable_tqdm=True)["mlp"]
    handle.remove()
    values = torch.cat([h.movedim(1, -1).reshape(-1, 20) for h in seen]).double()
    assert moments.mean.shape == (20,) and moments.count == values.shape[0] == 2 * 3 * 16
    torch.testing.assert_close(moments.mean, values.mean(0))
    torch.testing.assert_close(moments.variance, values.var(0, unbiased=False))


def test_structure_gates_on_a_pointwise_convolution_gate_its_input_channels():
    """SOSP's gates on a 1×1-conv consumer (timm ConvNeXt's ``conv_mlp``) scale input channels (dim 1 of NCHW): the
    gate gradient is Σ over images and pixels of ``x_s · ∂L/∂x_s``, and per-image gates sum to the shared one."""
    from hf_sparsify.observers.gates import StructureGates

    model, pixels = make_toy(), images(batch=2)
    x = model.embed(pixels)
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    x = (tokens + model.attn(tokens)).transpose(1, 2).reshape(b, c, h, w)
    hidden = model.mlp.act(model.mlp.fc1(x)).detach().requires_grad_(True)
    out = (model.mlp.fc2(hidden) * model.mlp.gamma.reshape(1, -1, 1, 1)).square().sum()
    out.backward()
    expected = (hidden * hidden.grad).sum(dim=(0, 2, 3)).double()

    def mlp_loss(gates):
        with gates:
            return model.mlp(x.detach()).square().sum()

    shared = StructureGates(model, [channel_group(model)])
    shared.gates[0].requires_grad_(True)
    (gradient,) = torch.autograd.grad(mlp_loss(shared), shared.gates)
    torch.testing.assert_close(gradient.double(), expected, rtol=1e-5, atol=1e-6)

    per_image = StructureGates(model, [channel_group(model)], per_sample=True)
    with per_image:
        loss = model.mlp(x.detach()).square().sum()
        (rows,) = torch.autograd.grad(loss, [per_image.batch_leaves()[0]])
    assert rows.shape == (2, 20)
    torch.testing.assert_close(rows.sum(0).double(), expected, rtol=1e-5, atol=1e-6)
