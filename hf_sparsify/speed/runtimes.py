"""The runtimes a model is timed in: PyTorch eager, ``torch.compile``, ONNX Runtime, and 2:4 semi-structured
kernels on NVIDIA GPUs. Each prepares a model (or one block of it) for repeated forwards on fixed inputs.

| runtime | what runs | needs |
|---|---|---|
| ``eager`` | the model as is, under ``torch.inference_mode`` | nothing |
| ``compile`` | ``torch.compile(model)`` (inductor; compiled during the warm-up) | a C++ compiler on CPU, triton on CUDA |
| ``onnxruntime`` | the model exported with :func:`~hf_sparsify.speed.onnx.export_onnx`, in an ONNX Runtime session (CPU provider; CUDA provider with I/O binding on a GPU) | ``pip install "hf_sparsify[onnx]"``; float32 on CPU; ``onnxruntime-gpu`` for CUDA |
| ``semi-structured`` | eager, with every 2:4-sparse ``nn.Linear`` converted by :func:`~hf_sparsify.speed.semi_structured.to_semi_structured` | an NVIDIA GPU of compute capability ≥ 8.0, float16 / bfloat16 |

:func:`check_runtime` says, before any work, whether this machine can run a runtime in a device and dtype, and
raises :class:`RuntimeUnavailableError` naming what is missing.

```python
>>> from hf_sparsify.speed.runtimes import prepare_model
>>> prepared = prepare_model(model, "eager", batch_size=2)
>>> tuple(prepared.output().shape)
(2, 10)
```
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import HfSparsifyError
from .inputs import dtype_name, example_inputs, resolve_device, resolve_dtype

__all__ = ["RUNTIMES", "PreparedModel", "RuntimeUnavailableError", "check_runtime", "prepare_model", "prepare_module"]

RUNTIMES = ("eager", "compile", "onnxruntime", "semi-structured")


class RuntimeUnavailableError(HfSparsifyError, RuntimeError):
    """This machine cannot run the runtime asked for (on that device, in that dtype): the message says what is
    missing and what to use instead."""


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check_runtime(runtime: str, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> None:
    """Raise :class:`RuntimeUnavailableError` when this machine cannot run ``runtime`` on ``device`` in ``dtype``.

    ```python
    >>> check_runtime("eager", "cpu", "fp32")      # always available
    ```
    """
    if runtime not in RUNTIMES:
        raise RuntimeUnavailableError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}.")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if runtime == "compile":
        if not hasattr(torch, "compile"):
            raise RuntimeUnavailableError(f"torch {torch.__version__} has no torch.compile; use --runtime eager.")
        if device.type == "cpu" and _cxx_compiler() is None:
            raise RuntimeUnavailableError("torch.compile on the CPU (inductor) needs a C++ compiler (g++ or clang++) on the PATH; none was found. Use --runtime eager or onnxruntime.")
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            raise RuntimeUnavailableError("torch.compile on CUDA (inductor) needs triton, which is not installed; use --runtime eager.")
    elif runtime == "onnxruntime":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeUnavailableError(f"the onnxruntime runtime needs {', '.join(missing)}: pip install \"hf_sparsify[onnx]\".")
        import onnxruntime as ort

        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailableError(
                    f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here (providers: {', '.join(ort.get_available_providers())}); "
                    "install onnxruntime-gpu for --device cuda, or use --device cpu."
                )
        elif dtype != torch.float32:
            raise RuntimeUnavailableError(
                f"ONNX Runtime's CPU provider has no {dtype_name(dtype)} kernels for most operators of these models; use --dtype fp32 on the CPU "
                "(or --device cuda with onnxruntime-gpu)."
            )
    elif runtime == "semi-structured":
        from .semi_structured import SemiStructuredUnavailableError, check_semi_structured_support

        try:
            check_semi_structured_support(device, dtype)
        except SemiStructuredUnavailableError as err:
            raise RuntimeUnavailableError(f"--runtime semi-structured: {err}") from None
    if device.type == "cpu" and dtype == torch.float16 and runtime in ("eager", "compile"):
        pass  # fp16 on the CPU runs (slowly) for these models in torch ≥ 2.1; an op without a kernel fails at preparation


@dataclass
class PreparedModel:
    """A model (or block) ready to be timed: :attr:`run` performs one forward on the fixed inputs.

    Attributes:
        runtime, device, dtype: how it runs.
        run: one forward (its result is discarded by the timer; CUDA work is synchronised by the timer).
        output: one forward returning the first output as a torch tensor on the CPU (for numerical checks).
        notes: facts about the preparation (layers converted to 2:4, export checks...).
    """

    runtime: str
    device: torch.device
    dtype: torch.dtype
    run: Callable[[], Any]
    output: Callable[[], torch.Tensor]
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    _workdir: Any = None

    def close(self) -> None:
        """Release the temporary files (ONNX exports) the preparation wrote."""
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def _first_tensor(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if hasattr(outputs, "items"):
        for _, value in outputs.items():
            if isinstance(value, torch.Tensor):
                return value
    for leaf in pytree.tree_leaves(outputs):
        if isinstance(leaf, torch.Tensor):
            return leaf
    raise RuntimeUnavailableError("the model returned no tensor")


class _ModuleCall(nn.Module):
    """``module(*args, **kwargs)`` with the tensors of ``args``/``kwargs`` as its only inputs and the tensors of
    its output as a flat tuple (what torch.onnx.export takes)."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        super().__init__()
        self.module = module
        leaves, self._spec = pytree.tree_flatten((args, kwargs))
        self._is_tensor = [isinstance(leaf, torch.Tensor) for leaf in leaves]
        self._constants = [None if t else leaf for leaf, t in zip(leaves, self._is_tensor)]
        self.tensors = tuple(leaf for leaf, t in zip(leaves, self._is_tensor) if t)

    def forward(self, *tensors):
        it = iter(tensors)
        leaves = [next(it) if t else c for t, c in zip(self._is_tensor, self._constants)]
        args, kwargs = pytree.tree_unflatten(leaves, self._spec)
        outputs = self.module(*args, **kwargs)
        return tuple(leaf for leaf in pytree.tree_leaves(outputs) if isinstance(leaf, torch.Tensor))


def _ort_runner(module: nn.Module, args: tuple, kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype, workdir: Path, *, whole_model: bool):
    """Export ``module`` and return (run, output, notes) for an ONNX Runtime session on ``device``."""
    import onnxruntime as ort

    from .onnx import _ort_session, _quiet_exporter, export_onnx

    notes: list[str] = []
    cpu_module = module.to("cpu")
    if whole_model:
        exported = export_onnx(cpu_module, workdir / "model.onnx", image_size=int(kwargs["pixel_values"].shape[-1]), dtype=dtype, verify=True)
        notes.extend(exported.notes)
        path, input_names = exported.path, ["pixel_values"]
        feeds = [kwargs["pixel_values"]]
    else:
        call = _ModuleCall(cpu_module, tuple(a.to("cpu") if isinstance(a, torch.Tensor) else a for a in args), {k: v.to("cpu") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
        path = workdir / "block.onnx"
        input_names = [f"input_{i}" for i in range(len(call.tensors))]
        with _quiet_exporter():
            program = torch.onnx.export(call, call.tensors, dynamo=True, input_names=input_names, verbose=False)
            program.save(str(path), external_data=False)
        feeds = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    threads = torch.get_num_threads() if device.type == "cpu" else None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    session = _ort_session(path, providers=providers, threads=threads)
    output_names = [o.name for o in session.get_outputs()]
    if device.type == "cuda":
        binding = session.io_binding()
        feeds = [f.to(device).contiguous() for f in feeds]
        element = {torch.float16: "float16", torch.float32: "float32", torch.bfloat16: "bfloat16"}
        for name, tensor in zip([i.name for i in session.get_inputs()], feeds):
            import numpy as np

            np_type = getattr(np, element.get(tensor.dtype, "float32"), np.float32)
            binding.bind_input(name, "cuda", device.index or 0, np_type, list(tensor.shape), tensor.data_ptr())
        for name in output_names:
            binding.bind_output(name, "cuda", device.index or 0)

        def run():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        def output():
            run()
            return torch.from_numpy(binding.copy_outputs_to_cpu()[0])

        return run, output, notes
    arrays = {i.name: f.detach().cpu().numpy() for i, f in zip(session.get_inputs(), feeds)}
    del ort

    def run():
        return session.run(output_names, arrays)

    def output():
        return torch.from_numpy(session.run(output_names[:1], arrays)[0])

    return run, output, notes


def prepare_module(
    module: nn.Module,
    args: tuple,
    kwargs: dict[str, Any],
    runtime: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    whole_model: bool = False,
) -> PreparedModel:
    """Prepare ``module(*args, **kwargs)`` (tensors already on ``device`` in ``dtype``) for repeated timing in
    ``runtime``. The module is moved and cast in place; give a copy to keep the original."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    check_runtime(runtime, device, dtype)
    module = module.to(device=device, dtype=dtype).eval()
    notes: list[str] = []
    info: dict[str, Any] = {}
    workdir = None
    if runtime in ("eager", "semi-structured", "compile"):
        if runtime == "semi-structured":
            from .semi_structured import SemiStructuredUnavailableError, to_semi_structured

            try:
                conversion = to_semi_structured(module)
            except SemiStructuredUnavailableError as err:
                raise RuntimeUnavailableError(f"--runtime semi-structured: {err}") from None
            info["semi_structured"] = conversion.to_dict()
            notes.append(f"{len(conversion.converted)} nn.Linear layers run on 2:4 semi-structured kernels" + (f", {len(conversion.kept_dense)} kept dense" if conversion.kept_dense else ""))
        target = torch.compile(module, dynamic=False) if runtime == "compile" else module

        @torch.inference_mode()
        def run():
            return target(*args, **kwargs)

        @torch.inference_mode()
        def output():
            return _first_tensor(target(*args, **kwargs)).detach().float().cpu()

    else:  # onnxruntime
        workdir = tempfile.TemporaryDirectory(prefix="hf_sparsify_onnx_")
        run, output, export_notes = _ort_runner(module, args, kwargs, device, dtype, Path(workdir.name), whole_model=whole_model)
        notes.extend(export_notes)
    return PreparedModel(runtime=runtime, device=device, dtype=dtype, run=run, output=output, notes=notes, info=info, _workdir=workdir)


def prepare_model(
    model: nn.Module,
    runtime: str = "eager",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int = 1,
    image_size: int | None = None,
    seed: int = 0,
    copy_model: bool = True,
) -> PreparedModel:
    """Prepare a whole model for timing on ``batch_size`` random images (seeded) of ``image_size`` in ``runtime``,
    on ``device`` in ``dtype``. ``copy_model``: prepare a copy (the given model is not moved or cast)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    check_runtime(runtime, device, dtype)
    if copy_model:
        model = copy.deepcopy(model)
    model = model.to(device=device, dtype=dtype).eval()
    inputs = example_inputs(model, batch_size, image_size, device=device, dtype=dtype, seed=seed)
    return prepare_module(model, (), inputs, runtime, device=device, dtype=dtype, whole_model=True)
