"""Compact sparse checkpoints: a bitmask and an N:M-packed format in one safetensors file.

``model.save_pretrained(dir, compressed=True)`` writes ``model.compressed.safetensors`` instead of
``model.safetensors``; :class:`hf_sparsify.AutoSparseModelForImageClassification` reloads it exactly: every tensor
``torch.equal`` to the saved one (only the sign of zero is not kept: ``-0.0``, which masking leaves behind for
negative weights, loads as ``0.0``).
compressed-tensors 0.20 no longer writes sparse formats, and with it transformers silently re-initialises the
weights of older sparse checkpoints, so hf_sparsify keeps a small format of its own.

Format ``hf_sparsify.sparse/1``. Every tensor of the checkpoint transformers would write (same names, shapes
and dtypes) is stored in one of three encodings, whichever is smallest (or as requested):

* ``dense``: the tensor itself, under its own name;
* ``bitmask``: ``{name}::bitmask``, uint8, one bit per element in row-major order (bit ``i % 8`` of byte
  ``i // 8``, least significant first), set where the element's bit pattern is not all zero (so ``-0.0`` and NaN
  are kept); ``{name}::values``, 1-D, the kept elements in order;
* ``nm`` (N:M along the input dimension, e.g. 2:4; groups as in :func:`hf_sparsify.surgery.nm_groups_view`):
  ``{name}::nm_values`` of shape ``(groups, N)`` and ``{name}::nm_indices``, uint8, the position (0..M-1) of each
  stored value in its group packed at ``bits`` per index (2 for 2:4), least significant first. Groups with fewer
  than N non-zeros store explicit zeros. This is the layout semi-structured sparse kernels take.

The safetensors metadata holds ``hf_sparsify.format``, ``hf_sparsify.tensors`` (JSON: name -> encoding, shape,
dtype, n, m, bits) and ``hf_sparsify.sha256`` (a digest of every stored tensor's bytes, checked on load, so a
damaged file is an error, not wrong weights). There is no ``model.safetensors`` in a compressed folder, so plain
transformers stops with "no file named model.safetensors" instead of loading random weights.

Sizes (see ``benchmarks/RESULTS.md``): a tensor with density ``d`` costs ``d * bytes + 1/8`` bytes per element
as a bitmask, e.g. ``0.53x`` dense at 50% sparsity in fp32 and ``0.56x`` in bf16; 2:4 costs the same
``0.5 * bytes + 1/8``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HfSparsifyError
from ..surgery.masks import _from_groups, nm_groups_view
from .load import SparseCheckpointError, optional_file

__all__ = [
    "COMPRESSED_WEIGHTS_NAME",
    "FORMAT",
    "compress_state_dict",
    "decompress_state_dict",
    "save_compressed",
    "load_compressed",
    "compress_checkpoint",
    "compression_settings",
    "read_compressed_checkpoint",
    "same_values",
]

COMPRESSED_WEIGHTS_NAME = "model.compressed.safetensors"
FORMAT = "hf_sparsify.sparse/1"
ENCODINGS = ("auto", "bitmask", "nm")


class CompressionSettingsError(HfSparsifyError, ValueError):
    """``save_pretrained(compressed=...)`` got a value that names no encoding of the compressed format."""


def _error(message: str) -> Exception:
    return SparseCheckpointError(message)


# --------------------------------------------------------------------------------------------- bit packing
def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (flattened) into uint8, 8 elements per byte, least significant bit first."""
    flat = mask.detach().reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little"))


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: a flat bool tensor of ``numel`` elements."""
    bits = np.unpackbits(packed.detach().reshape(-1).cpu().numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits).view(torch.bool)


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack small non-negative integers (< 2**bits, bits in 1, 2, 4, 8) into uint8, least significant first."""
    per_byte = 8 // bits
    flat = indices.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % per_byte
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(per_byte, dtype=torch.uint8, device=flat.device) * bits
    return (flat.view(-1, per_byte) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_indices(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.uint8, device=packed.device) * bits
    values = (packed.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(-1)[:count].long()


def _index_bits(m: int) -> int:
    needed = max(1, math.ceil(math.log2(m)))
    for bits in (1, 2, 4, 8):
        if bits >= needed:
            return bits
    raise ValueError(f"N:M packing supports M <= 256, got M={m}")


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and values (NaN matches NaN; -0.0 matches 0.0, as in ``torch.equal``)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())


_INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's elements as same-width integers in numpy (numpy has no bfloat16), flattened, no copy."""
    return tensor.detach().contiguous().reshape(-1).view(_INT_VIEWS[tensor.element_size()]).numpy()


def _from_numpy(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(array).view(dtype)


def _nonzero_mask(tensor: torch.Tensor) -> torch.Tensor:
    """True where the element is not zero (NaN counts as non-zero; -0.0, which masking leaves behind for
    negative weights, counts as zero and loads back as 0.0)."""
    return tensor != 0


# --------------------------------------------------------------------------------------------- one tensor
def _encoded_sizes(tensor: torch.Tensor, nonzero: torch.Tensor, nm: tuple[int, int] | None) -> dict[str, int | None]:
    numel, item = tensor.numel(), tensor.element_size()
    nnz = int(np.count_nonzero(nonzero.reshape(-1).numpy()))
    sizes: dict[str, int | None] = {"dense": numel * item, "bitmask": (numel + 7) // 8 + nnz * item, "nm": None}
    if nm is not None and _fits_nm(nonzero, nm):
        n, m = nm
        groups = numel // m
        sizes["nm"] = groups * n * item + (groups * n * _index_bits(m) + 7) // 8
    return sizes


def _fits_nm(nonzero: torch.Tensor, nm: tuple[int, int]) -> bool:
    """Whether a tensor with this non-zero mask has at most N non-zeros in every group of M (input dimension)."""
    n, m = nm
    if nonzero.dim() not in (2, 4):
        return False
    inner = nonzero.shape[1] if nonzero.dim() == 4 else nonzero.shape[-1]
    if inner % m:
        return False
    counts = nm_groups_view(nonzero, m).sum(dim=1, dtype=torch.int32)
    return bool((counts <= n).all())


def encode_tensor(name: str, tensor: torch.Tensor, encoding: str = "auto", nm: tuple[int, int] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encode one tensor. Returns the stored tensors and its metadata entry.

    ``encoding``: ``"auto"`` (the smallest of dense / bitmask / N:M), ``"bitmask"`` (bitmask unless that is
    larger than dense), ``"nm"`` (N:M where the tensor fits the pattern, else as ``"bitmask"``).
    Non-floating tensors are always stored dense.
    """
    tensor = tensor.detach().contiguous()
    entry: dict[str, Any] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", "")}
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return {name: tensor}, {**entry, "encoding": "dense"}
    nonzero = _nonzero_mask(tensor)
    sizes = _encoded_sizes(tensor, nonzero, nm)
    if encoding == "nm" and sizes["nm"] is not None and sizes["nm"] < sizes["dense"]:
        choice = "nm"
    elif encoding == "auto":
        choice = min((s, k) for k, s in sizes.items() if s is not None)[1]
    else:
        choice = "bitmask" if sizes["bitmask"] < sizes["dense"] else "dense"
    if choice == "dense":
        return {name: tensor}, {**entry, "encoding": "dense"}
    if choice == "bitmask":
        return {f"{name}::bitmask": pack_bits(nonzero), f"{name}::values": _from_numpy(_as_numpy(tensor)[nonzero.reshape(-1).numpy()], tensor.dtype)}, {**entry, "encoding": "bitmask"}
    n, m = nm  # type: ignore[misc]
    bits = _index_bits(m)
    groups = nm_groups_view(tensor, m)
    nonzero = nm_groups_view(nonzero, m)
    # Stable order: the non-zero positions first (in position order), then zero positions as padding.
    order = torch.sort((~nonzero).to(torch.uint8), dim=1, stable=True).indices[:, :n]
    order = torch.sort(order, dim=1).values
    values = torch.gather(groups, 1, order)
    stored = {f"{name}::nm_values": values.contiguous(), f"{name}::nm_indices": pack_indices(order, bits)}
    return stored, {**entry, "encoding": "nm", "n": n, "m": m, "bits": bits}


def decode_tensor(name: str, stored: dict[str, torch.Tensor], entry: dict[str, Any]) -> torch.Tensor:
    """The inverse of :func:`encode_tensor` (raises :class:`~hf_sparsify.SparseCheckpointError` on inconsistency)."""
    shape = tuple(int(s) for s in entry["shape"])
    numel = math.prod(shape)
    encoding = entry.get("encoding")
    try:
        if encoding == "dense":
            tensor = stored[name]
            if tuple(tensor.shape) != shape:
                raise ValueError(f"shape {tuple(tensor.shape)} instead of {shape}")
            return tensor
        if encoding == "bitmask":
            packed, values = stored[f"{name}::bitmask"], stored[f"{name}::values"]
            if packed.dtype != torch.uint8 or packed.numel() != (numel + 7) // 8:
                raise ValueError("bitmask length does not match the shape")
            mask = unpack_bits(packed, numel)
            count = int(np.count_nonzero(mask.numpy()))
            if count != values.numel():
                raise ValueError(f"bitmask has {count} set bits but {values.numel()} values are stored")
            out = np.zeros(numel, dtype=_as_numpy(values).dtype)
            out[mask.numpy()] = _as_numpy(values)
            return _from_numpy(out, values.dtype).reshape(shape)
        if encoding == "nm":
            n, m, bits = int(entry["n"]), int(entry["m"]), int(entry["bits"])
            values, packed = stored[f"{name}::nm_values"], stored[f"{name}::nm_indices"]
            groups = numel // m
            if values.shape != (groups, n):
                raise ValueError(f"N:M values have shape {tuple(values.shape)}, expected {(groups, n)}")
            indices = unpack_indices(packed, groups * n, bits).view(groups, n)
            if indices.numel() != groups * n or (indices.numel() and int(indices.max()) >= m):
                raise ValueError("N:M indices are out of range")
            like = torch.empty(shape, dtype=values.dtype, device="meta")
            dense_groups = torch.zeros(groups, m, dtype=values.dtype)
            dense_groups.scatter_(1, indices, values)
            return _from_groups(dense_groups, like)
    except KeyError as err:
        raise _error(f"compressed checkpoint: tensor {name} is missing its part {err}; the file is damaged.") from None
    except (ValueError, RuntimeError) as err:
        raise _error(f"compressed checkpoint: tensor {name} cannot be decoded ({err}); the file is damaged.") from None
    raise _error(f"compressed checkpoint: tensor {name} has unknown encoding {encoding!r}; upgrade hf_sparsify.")


# --------------------------------------------------------------------------------------------- state dicts
def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(key.encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def compress_state_dict(state_dict: dict[str, torch.Tensor], encoding: str = "auto", nm: tuple[int, int] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Encode every tensor (see :func:`encode_tensor`); returns the tensors to store and the safetensors metadata."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if encoding == "nm" and nm is None:
        raise ValueError("encoding='nm' needs nm=(N, M), e.g. (2, 4)")
    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for name, tensor in state_dict.items():
        if "::" in name:
            raise ValueError(f"tensor name {name!r} contains '::', which the compressed format reserves")
        parts, entry = encode_tensor(name, tensor.cpu(), encoding, nm)
        stored.update(parts)
        entries[name] = entry
    metadata = {"format": "pt", "hf_sparsify.format": FORMAT, "hf_sparsify.tensors": json.dumps(entries), "hf_sparsify.sha256": _digest(stored)}
    return stored, metadata


def decompress_state_dict(stored: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Decode what :func:`compress_state_dict` produced, verifying the format and the digest."""
    metadata = metadata or {}
    if metadata.get("hf_sparsify.format") != FORMAT:
        raise _error(f"{source} is not an hf_sparsify compressed checkpoint (format {metadata.get('hf_sparsify.format')!r}, expected {FORMAT!r}).")
    if _digest(stored) != metadata.get("hf_sparsify.sha256"):
        raise _error(f"{source} is damaged: its tensors do not match the checksum written when it was saved. Download or save it again.")
    try:
        entries = json.loads(metadata["hf_sparsify.tensors"])
    except (KeyError, json.JSONDecodeError) as err:
        raise _error(f"{source} has an unreadable tensor table ({err}); the file is damaged.") from None
    return {name: decode_tensor(name, stored, entry) for name, entry in entries.items()}


def save_compressed(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, encoding: str = "auto", nm: tuple[int, int] | None = None) -> dict[str, int]:
    """Write ``state_dict`` compressed to ``path`` (atomically). Returns ``{"encoding": count, ..., "bytes": size}``."""
    from safetensors.torch import save_file

    stored, metadata = compress_state_dict(state_dict, encoding, nm)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(stored, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    counts: dict[str, int] = {}
    for entry in json.loads(metadata["hf_sparsify.tensors"]).values():
        counts[entry["encoding"]] = counts.get(entry["encoding"], 0) + 1
    counts["bytes"] = path.stat().st_size
    return counts


def _read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as err:
        raise _error(f"{path} is truncated or damaged ({err}). Download it again (force_download=True) or save the model again.") from None
    return tensors, metadata


def load_compressed(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a compressed checkpoint file back into the state dict it was made from (exactly)."""
    stored, metadata = _read_safetensors(path)
    return decompress_state_dict(stored, metadata, source=str(path))


def _dense_weight_files(directory: Path) -> list[Path]:
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    index = directory / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / f for f in files] + [index]
    single = directory / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{directory} holds no {SAFE_WEIGHTS_NAME} to compress")


def compress_checkpoint(directory: str | os.PathLike, encoding: str = "auto", nm: tuple[int, int] | None = None) -> dict[str, int]:
    """Replace the dense safetensors weights transformers wrote in ``directory`` (single file or shards) by
    :data:`COMPRESSED_WEIGHTS_NAME`. The compressed file is written and checked before the dense files go."""
    directory = Path(directory)
    files = _dense_weight_files(directory)
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state_dict.update(_read_safetensors(file)[0])
    target = directory / COMPRESSED_WEIGHTS_NAME
    stats = save_compressed(state_dict, target, encoding, nm)
    reloaded = load_compressed(target)
    if reloaded.keys() != state_dict.keys() or not all(same_values(reloaded[k], state_dict[k]) for k in state_dict):
        target.unlink()
        raise RuntimeError("hf_sparsify: the compressed checkpoint did not decode to the saved weights; the dense weights were kept.")
    for file in files:
        file.unlink()
    return stats


def compression_settings(pruning_config, compressed: bool | str | None) -> dict[str, Any] | None:
    """What ``save_pretrained(compressed=...)`` records in ``config.json`` (format, file, encoding, N:M pattern), or
    ``None`` for a dense save. ``compressed``: ``True``/``"auto"`` (N:M when the pruning config has an N:M pattern,
    else the smallest encoding per tensor), ``"bitmask"``, ``"nm"`` or an ``"N:M"`` pattern such as ``"2:4"``."""
    from ..configuration import parse_nm

    if compressed is False or compressed is None:
        return None
    encoding = "auto" if compressed is True else str(compressed)
    nm = pruning_config.nm_pattern() if pruning_config is not None else None
    if ":" in encoding:
        nm, encoding = parse_nm(encoding), "nm"
    elif encoding == "auto" and nm is not None:
        encoding = "nm"
    if encoding not in ENCODINGS:
        raise CompressionSettingsError(f"compressed must be True, 'bitmask', 'nm' or an 'N:M' pattern such as '2:4', got {compressed!r}")
    if encoding == "nm" and nm is None:
        raise CompressionSettingsError("compressed='nm' needs an N:M pattern: pass compressed='2:4' (or prune with an N:M mask structure such as '2:4').")
    settings: dict[str, Any] = {"format": FORMAT, "file": COMPRESSED_WEIGHTS_NAME, "encoding": encoding}
    if nm is not None:
        settings["nm"] = list(nm)
    return settings


def read_compressed_checkpoint(source: str | os.PathLike, compression: dict[str, Any], hub_kwargs: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of the compressed checkpoint of a folder or Hub repo whose ``config.json`` recorded
    ``compression`` (see :func:`compression_settings`)."""
    if compression.get("format") != FORMAT:
        raise _error(f"{source} uses compressed format {compression.get('format')!r}; this hf_sparsify reads {FORMAT!r}. Upgrade hf_sparsify.")
    name = compression.get("file") or COMPRESSED_WEIGHTS_NAME
    file = optional_file(source, name, hub_kwargs)
    if file is None:
        raise _error(f"{source} has no {name}, although its config.json records a compressed checkpoint: the folder or repo is incomplete.")
    return load_compressed(file)
