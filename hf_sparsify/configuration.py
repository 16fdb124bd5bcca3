"""Pruning configuration objects, optimum-style.

Every pruning method has one configuration class, a dataclass that validates itself on construction and
serialises to ``pruning_config.json``. :class:`PruningConfig` is the base; :func:`register_method` joins a method
(its configuration class and its pruner class) to the registry in one line, so that
``PruningConfig.from_pretrained`` can dispatch on the ``method`` field.

Example:

```python
>>> from hf_sparsify import MagnitudeConfig, PruningConfig
>>> config = MagnitudeConfig(sparsity=0.5, sparsity_distribution="global")
>>> config.save_pretrained("my_pruned_model")          # writes my_pruned_model/pruning_config.json
>>> PruningConfig.from_pretrained("my_pruned_model")   # -> MagnitudeConfig(sparsity=0.5, ...)
```
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

__all__ = [
    "CONFIG_NAME",
    "PruningConfig",
    "PruningConfigError",
    "register_method",
    "get_method",
    "available_methods",
    "parse_nm",
]

CONFIG_NAME = "pruning_config.json"


class PruningConfigError(ValueError):
    """A pruning configuration is invalid. The message says which field and how to fix it."""


@dataclass(frozen=True)
class MethodEntry:
    """One row of the method registry."""

    name: str
    config_class: type
    pruner_class: type


_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, config_class: type, pruner_class: type) -> None:
    """Join a pruning method to the registry (one line per method, in the method's ``__init__.py``).

    Args:
        name: the value of the ``method`` field in ``pruning_config.json`` and of ``--method`` on the CLI.
        config_class: the method's :class:`PruningConfig` subclass.
        pruner_class: the method's :class:`~hf_sparsify.methods.base.Pruner` subclass.
    """
    if not (isinstance(config_class, type) and issubclass(config_class, PruningConfig)):
        raise TypeError(f"{config_class!r} is not a PruningConfig subclass")
    if name in _METHODS and _METHODS[name].config_class is not config_class:
        raise ValueError(f"pruning method {name!r} is already registered by {_METHODS[name].config_class.__name__}")
    config_class.method = name
    _METHODS[name] = MethodEntry(name, config_class, pruner_class)


def _ensure_methods_loaded() -> None:
    # The methods package registers every built-in method on import.
    import hf_sparsify.methods  # noqa: F401


def available_methods() -> list[str]:
    """The names of all registered pruning methods."""
    _ensure_methods_loaded()
    return sorted(_METHODS)


def get_method(name: str) -> MethodEntry:
    """Registry entry of a method, with a suggestion when the name is unknown."""
    _ensure_methods_loaded()
    if name not in _METHODS:
        raise PruningConfigError(
            f"Unknown pruning method {name!r}.{_suggest(name, _METHODS)} Available methods: {', '.join(sorted(_METHODS))}."
        )
    return _METHODS[name]


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def parse_nm(value: str) -> tuple[int, int]:
    """Parse an ``"N:M"`` mask structure (``"2:4"``: at most 2 weights kept in every group of 4)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(value))
    if not match:
        raise PruningConfigError(
            f"mask_structure={value!r} is not understood: use 'unstructured' or 'N:M' with integers, e.g. '2:4'."
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise PruningConfigError(f"mask_structure={value!r}: N:M needs 0 < N < M (N weights kept of every M), e.g. '2:4'.")
    return n, m


def _type_ok(value: Any, annotation: Any) -> bool:
    """A light runtime check of JSON-ish values against simple annotations (int, float, str, bool, list, Optional)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(annotation)
        if args and origin is list:
            return all(_type_ok(v, args[0]) for v in value)
        return True
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if typing.get_origin(annotation) is typing.Literal:
        return value in typing.get_args(annotation)
    return True


def _describe(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


@dataclass(kw_only=True)
class PruningConfig:
    """Base class of all pruning configurations.

    Subclasses are keyword-only dataclasses; they validate in ``__post_init__`` (call ``super().__post_init__()``)
    and join the registry with :func:`register_method`.

    Attributes:
        targets: regular expressions searched (``re.search``) in module names; a matching ``nn.Linear`` or
            ``nn.Conv2d`` is pruned. ``None`` means the prunable layers the model's adapter declares (attention
            projections, MLP layers, ConvNeXt pointwise and downsampling convs), never embeddings, norms,
            LayerScale or the classifier. Give ``targets`` to prune other layers or an architecture that has no
            adapter, e.g. ``targets=[r"\\.mlp\\.fc\\d$"]``.
        ignore: regular expressions of module names to leave dense, applied after ``targets``.
        num_calibration_samples: how many calibration images the method uses (drawn at random with ``seed``
            from a dataset); ``None`` uses the method's default.
        calibration_batch_size: batch size used to turn a dataset into calibration batches.
        seed: seed of every random choice of the method (calibration subsets, random projections).
    """

    method: ClassVar[str] = ""
    #: the field that the CLI's ``--sparsity`` sets (VBP: ``pruning_ratio``)
    sparsity_field: ClassVar[str] = "sparsity"

    targets: list[str] | None = None
    ignore: list[str] | None = None
    num_calibration_samples: int | None = None
    calibration_batch_size: int = 32
    seed: int = 0

    # ----------------------------------------------------------------------------------------- construction
    def __new__(cls, *args, **kwargs):
        if args:
            raise TypeError(f"{cls.__name__} takes keyword arguments only, e.g. {cls.__name__}(sparsity=0.5)")
        cls._check_keys(kwargs)
        return super().__new__(cls)

    @classmethod
    def _field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def _check_keys(cls, keys) -> None:
        valid = cls._field_names()
        unknown = [k for k in keys if k not in valid]
        if unknown:
            key = unknown[0]
            raise PruningConfigError(
                f"{cls.__name__} got an unknown key {key!r}.{_suggest(key, valid)} Valid keys: {', '.join(valid)}."
            )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, f.name, value)
            if not _type_ok(value, hints.get(f.name, Any)):
                raise PruningConfigError(
                    f"{type(self).__name__}.{f.name} must be of type {_describe(hints.get(f.name))}, "
                    f"got {value!r} ({type(value).__name__})."
                )
        for name in ("targets", "ignore"):
            patterns = getattr(self, name)
            if isinstance(patterns, str):
                patterns = [patterns]
                setattr(self, name, patterns)
            for pattern in patterns or []:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise PruningConfigError(f"{name} holds an invalid regular expression {pattern!r}: {err}.") from None
        if self.targets is not None and len(self.targets) == 0:
            raise PruningConfigError("targets=[] selects no layer: give at least one regular expression, or None for the adapter's defaults.")
        if self.num_calibration_samples is not None and self.num_calibration_samples < 1:
            raise PruningConfigError(f"num_calibration_samples must be ≥ 1 (or None for the method default), got {self.num_calibration_samples}.")
        if self.calibration_batch_size < 1:
            raise PruningConfigError(f"calibration_batch_size must be ≥ 1, got {self.calibration_batch_size}.")

    # Helpers for subclasses' validation --------------------------------------------------------------------
    @staticmethod
    def _check_fraction(name: str, value: float, *, allow_zero: bool = True) -> None:
        low_ok = value >= 0 if allow_zero else value > 0
        if not (low_ok and value < 1):
            interval = "[0, 1)" if allow_zero else "(0, 1)"
            raise PruningConfigError(
                f"{name} must be in {interval} (the fraction of weights removed), got {value}. "
                f"For example {name}=0.5 removes half of the targeted weights."
            )

    @staticmethod
    def _check_choice(name: str, value: str, choices) -> None:
        if value not in choices:
            raise PruningConfigError(f"{name}={value!r} is not one of {list(choices)}.{_suggest(value, choices)}")

    # ----------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict, with its ``method`` first."""
        from hf_sparsify import __version__

        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            if f.init:
                out[f.name] = _jsonable(getattr(self, f.name))
        out["hf_sparsify_version"] = __version__
        return out

    def to_json_string(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json_string(), encoding="utf-8")

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``pruning_config.json`` into ``save_directory`` (created if needed); returns the file path."""
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file; save_pretrained expects a directory.")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        self.to_json_file(path)
        return str(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        """Build the configuration of the method named in ``data["method"]``.

        Called on a subclass, the method must match that subclass (a ``pruning_config.json`` of another method
        is refused); called on :class:`PruningConfig`, it dispatches through the registry.
        """
        if not isinstance(data, dict):
            raise PruningConfigError(f"A pruning configuration must be a JSON object, got {type(data).__name__}.")
        data = dict(data)
        data.pop("hf_sparsify_version", None)
        method = data.pop("method", None)
        if method is None:
            if cls is PruningConfig:
                raise PruningConfigError(
                    "The pruning configuration has no 'method' field: add e.g. \"method\": \"magnitude\", "
                    f"one of {available_methods()}."
                )
            method = cls.method
        entry = get_method(method)
        if cls is not PruningConfig and not issubclass(entry.config_class, cls):
            raise PruningConfigError(
                f"This pruning configuration is for method {method!r} ({entry.config_class.__name__}), "
                f"not {cls.method!r}: load it with PruningConfig.from_pretrained(...) or {entry.config_class.__name__}."
            )
        return entry.config_class(**data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "PruningConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise PruningConfigError(f"Cannot read pruning configuration {path}: {err.strerror or err}.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PruningConfigError(
                f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                "fix the file or write a new one with config.save_pretrained(dir)."
            ) from None
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, source: "str | os.PathLike | dict[str, Any] | PruningConfig") -> "PruningConfig":
        """Load a configuration from a directory holding ``pruning_config.json``, a JSON file, or a dict.

        ```python
        >>> config = PruningConfig.from_pretrained("my_pruned_model")  # a MagnitudeConfig, CAPConfig, ...
        ```
        """
        if isinstance(source, PruningConfig):
            return cls.from_dict(source.to_dict())
        if isinstance(source, dict):
            return cls.from_dict(source)
        path = Path(source)
        if path.is_dir():
            file = path / CONFIG_NAME
            if not file.is_file():
                raise PruningConfigError(
                    f"{path} holds no {CONFIG_NAME}: it is not a model pruned by hf_sparsify, or the file was removed."
                )
            return cls.from_json_file(file)
        if path.is_file():
            return cls.from_json_file(path)
        raise PruningConfigError(f"No pruning configuration at {path}: give a directory, a JSON file or a dict.")

    # ----------------------------------------------------------------------------------------- conveniences
    def replace(self, **changes) -> "PruningConfig":
        """A validated copy with some fields changed (``config.replace(sparsity=0.7)``)."""
        type(self)._check_keys(changes)
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.init)
        return f"{type(self).__name__}({fields})"


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
