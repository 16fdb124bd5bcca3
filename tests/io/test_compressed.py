"""The compact sparse checkpoint format: bit packing against a slow oracle, exact round trips of every encoding
and dtype, sizes, save_pretrained(compressed=...) + the hf_sparsify loader, and damaged files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

import hf_sparsify
from hf_sparsify.io.compressed import (
    COMPRESSED_WEIGHTS_NAME,
    compress_state_dict,
    decode_tensor,
    decompress_state_dict,
    encode_tensor,
    load_compressed,
    pack_bits,
    pack_indices,
    same_values,
    unpack_bits,
    unpack_indices,
)
from hf_sparsify.surgery import nm_mask
from tests.conftest import make_tiny_model, tiny_pixel_values
from tests.io.models import structured_model, unstructured_model


def _oracle_pack_bits(mask: list[bool]) -> list[int]:
    out = []
    for start in range(0, len(mask), 8):
        out.append(sum(1 << i for i, bit in enumerate(mask[start:start + 8]) if bit))
    return out


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 100])
def test_pack_bits_matches_the_oracle_and_round_trips(numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.tolist() == _oracle_pack_bits(mask.tolist())
    assert torch.equal(unpack_bits(packed, numel), mask)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_indices_round_trips(bits):
    values = torch.randint(0, 2**bits, (37,), generator=torch.Generator().manual_seed(bits))
    packed = pack_indices(values, bits)
    assert packed.numel() == -(-37 * bits // 8)
    assert torch.equal(unpack_indices(packed, 37, bits), values)
    if bits == 2:  # least significant first: [1, 2, 3, 0] -> 0b00111001
        assert pack_indices(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]


def _sparse(shape, dtype, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w = w * (torch.rand(shape, generator=g) < density)  # leaves -0.0 where negative weights were masked
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("density", [0.0, 0.25, 0.5, 1.0])
def test_bitmask_round_trip_is_exact_and_picks_the_smaller_encoding(dtype, density):
    w = _sparse((24, 40), dtype, density)
    if density == 0.5:
        w[0, 0] = float("nan")  # NaN survives as a non-zero value
    stored, entry = encode_tensor("w", w)
    assert same_values(decode_tensor("w", stored, entry), w)
    size = sum(t.numel() * t.element_size() for t in stored.values())
    dense_size = w.numel() * w.element_size()
    assert entry["encoding"] == ("dense" if density == 1.0 else "bitmask")
    assert size <= dense_size
    if density == 0.5:
        assert size <= 0.6 * dense_size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, nm", [((16, 32), (2, 4)), ((8, 8, 3, 3), (2, 4)), ((6, 16), (2, 8)), ((6, 16), (1, 2))])
def test_nm_round_trip_is_exact_for_linear_and_conv_weights(dtype, shape, nm):
    n, m = nm
    g = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=g)
    w = (w * nm_mask(w.abs(), n, m)).to(dtype)
    w.view(-1)[:m] = 0  # a group with fewer than N non-zeros stores explicit zeros
    stored, entry = encode_tensor("w", w, "nm", nm)
    assert entry["encoding"] == "nm" and entry["n"] == n and entry["m"] == m
    groups = w.numel() // m
    assert stored["w::nm_values"].shape == (groups, n)
    assert same_values(decode_tensor("w", stored, entry), w)
    if nm == (2, 4):
        size = sum(t.numel() * t.element_size() for t in stored.values())
        assert size <= 0.6 * w.numel() * w.element_size()


def test_nm_falls_back_to_bitmask_for_tensors_off_the_pattern():
    w = _sparse((8, 12), torch.float32, 0.3)  # not 2:4
    stored, entry = encode_tensor("w", w, "nm", (2, 4))
    assert entry["encoding"] == "bitmask" and same_values(decode_tensor("w", stored, entry), w)
    bias = torch.randn(8)
    assert encode_tensor("b", bias, "nm", (2, 4))[1]["encoding"] == "dense"
    ints = torch.arange(10)
    assert encode_tensor("i", ints)[1]["encoding"] == "dense"


def test_state_dict_checksum_detects_changed_values():
    state = {"a": _sparse((16, 16), torch.float32, 0.5), "b": torch.randn(4)}
    stored, metadata = compress_state_dict(state)
    assert all(same_values(decompress_state_dict(stored, metadata)[k], v) for k, v in state.items())
    stored["a::values"][3] += 1.0
    with pytest.raises(hf_sparsify.SparseCheckpointError, match="damaged"):
        decompress_state_dict(stored, metadata)


def _logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compressed_checkpoint_reloads_exactly_and_is_smaller(tmp_path, dtype):
    pruned = unstructured_model().to(dtype)
    dense_dir, small_dir = tmp_path / "dense", tmp_path / "small"
    pruned.save_pretrained(dense_dir)
    pruned.save_pretrained(small_dir, compressed=True)
    assert not (small_dir / "model.safetensors").exists() and (small_dir / COMPRESSED_WEIGHTS_NAME).exists()
    assert "compression" not in pruned.config.hf_sparsify  # the in-memory model is unchanged
    config = json.loads((small_dir / "config.json").read_text())
    assert config["hf_sparsify"]["compression"]["encoding"] == "auto"
    dense_size = (dense_dir / "model.safetensors").stat().st_size
    # a tiny model: its dense embeddings and the file header weigh; benchmarks/bench_checkpoint_size.py measures real sizes
    assert (small_dir / COMPRESSED_WEIGHTS_NAME).stat().st_size < (0.75 if dtype == torch.float32 else 0.9) * dense_size

    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(small_dir)
    expected = load_file(str(dense_dir / "model.safetensors"))
    assert reloaded.dtype == dtype
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, pruned.state_dict()[name]), name
    x = tiny_pixel_values(pruned).to(dtype)
    assert torch.equal(_logits(reloaded, x), _logits(pruned, x))
    assert "compression" not in reloaded.config.hf_sparsify
    # every tensor transformers would have written is in the compressed file, bit for bit in value
    assert load_compressed(small_dir / COMPRESSED_WEIGHTS_NAME).keys() == expected.keys()
    # saved again without compression: a plain checkpoint, the stale compressed file is gone
    reloaded.save_pretrained(small_dir)
    assert (small_dir / "model.safetensors").exists() and not (small_dir / COMPRESSED_WEIGHTS_NAME).exists()


def test_two_four_checkpoint_uses_the_nm_encoding(tmp_path):
    model = make_tiny_model("vit")
    pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5, mask_structure="2:4"))
    pruned.save_pretrained(tmp_path, compressed=True)
    with safe_open(str(tmp_path / COMPRESSED_WEIGHTS_NAME), framework="pt") as handle:
        table = json.loads(handle.metadata()["hf_sparsify.tensors"])
    encodings = {name: entry["encoding"] for name, entry in table.items()}
    assert sum(e == "nm" for e in encodings.values()) == 12  # q, k, v, o, fc1, fc2 of 2 layers
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    x = tiny_pixel_values(pruned)
    assert torch.equal(_logits(reloaded, x), _logits(pruned, x))


def test_structured_model_saves_compressed_and_reloads(tmp_path):
    model = structured_model()
    model.save_pretrained(tmp_path, compressed=True)
    reloaded = hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)
    x = tiny_pixel_values(model)
    assert torch.equal(_logits(reloaded, x), _logits(model, x))


def test_bad_compressed_argument_is_refused_before_writing(tmp_path):
    pruned = unstructured_model()
    with pytest.raises(ValueError, match="compressed must be"):
        pruned.save_pretrained(tmp_path / "out", compressed="zip")
    with pytest.raises(ValueError, match="needs an N:M pattern"):
        pruned.save_pretrained(tmp_path / "out", compressed="nm")
    assert not (tmp_path / "out").exists()


def test_plain_transformers_refuses_a_compressed_checkpoint_loudly(tmp_path):
    unstructured_model().save_pretrained(tmp_path, compressed=True)
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------- damaged files
def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":
        path.write_bytes(data[:8] + b"{not json" + data[17:])
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "header", "empty"])
@pytest.mark.parametrize("compressed", [False, True])
def test_damaged_weights_raise_a_clear_error(tmp_path, how, compressed):
    unstructured_model().save_pretrained(tmp_path, compressed=compressed)
    _damage(tmp_path / (COMPRESSED_WEIGHTS_NAME if compressed else "model.safetensors"), how)
    with pytest.raises(hf_sparsify.SparseCheckpointError, match="truncated or damaged"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)


def test_changed_bytes_in_a_compressed_file_are_detected(tmp_path):
    unstructured_model().save_pretrained(tmp_path, compressed=True)
    path = tmp_path / COMPRESSED_WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's data: the header is intact
    path.write_bytes(bytes(data))
    with pytest.raises(hf_sparsify.SparseCheckpointError, match="checksum"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)


def test_a_dense_file_renamed_to_the_compressed_name_is_refused(tmp_path):
    unstructured_model().save_pretrained(tmp_path, compressed=True)
    save_file({"x": torch.zeros(2)}, str(tmp_path / COMPRESSED_WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(hf_sparsify.SparseCheckpointError, match="not an hf_sparsify compressed checkpoint"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """safetensors only: torch.load (pickle) is never reached, for either format, and no remote code is needed."""
    model = unstructured_model()
    model.save_pretrained(tmp_path / "dense")
    model.save_pretrained(tmp_path / "small", compressed=True)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle would have been read")

    monkeypatch.setattr(torch, "load", refuse)
    for folder in ("dense", "small"):
        hf_sparsify.AutoSparseModelForImageClassification.from_pretrained(tmp_path / folder, trust_remote_code=False)
