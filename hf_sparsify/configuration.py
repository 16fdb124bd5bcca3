"""Pruning configuration objects, optimum-style, and the method registry.

Every pruning method has one configuration class, a dataclass that validates itself on construction and
serialises to ``pruning_config.json``. :class:`PruningConfig` is the base; :func:`register_method` joins a method
(its configuration class and its pruner class) to the registry in one line, in the method's own folder, so that
``PruningConfig.from_pretrained``, :func:`hf_sparsify.prune`, the CLI, ``SparseTrainer``, saving, the model card
and the demo find it. The registry never imports a method: the built-in ones are discovered as the sub-packages of
``hf_sparsify.methods``, others join when their module is imported.

What the rest of the package needs to know about a method is declared on its configuration class (and on its
pruner class, see :class:`hf_sparsify.methods.base.Pruner`), never read from its fields by name:

* ``target_field`` / ``target_interpolable``: the field ``--sparsity`` and pruning schedules set, and whether a
  schedule may interpolate it (a sparsity may ramp; a speed-up target may not);
* ``needs_labels()``, ``effective_batch_size``, ``calibration_images()``: what the calibration data must hold;
* ``nm_pattern()``: the N:M pattern of the masks, if any (compressed saving, the card);
* ``citation``, ``demo_settings``, ``quick_settings``, ``label_free_settings``: the card's BibTeX, the demo's
  settings, settings that run in seconds on a tiny model (contract tests, docstring examples), and what makes the
  method run without labels;
* every field carries ``metadata={"help": ...}``: the CLI's flags are generated from them.

Example:

```python
>>> from hf_sparsify import MagnitudeConfig, PruningConfig
>>> config = MagnitudeConfig(sparsity=0.5, sparsity_distribution="global")
>>> path = config.save_pretrained(tmp_dir)                 # writes tmp_dir/pruning_config.json
>>> PruningConfig.from_pretrained(tmp_dir) == config       # dispatches on the "method" field
True
```
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import pkgutil
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from .errors import HfSparsifyError

__all__ = [
    "CONFIG_NAME",
    "CUSTOM_LOSS",
    "Citation",
    "LossFieldMixin",
    "MethodEntry",
    "PruningConfig",
    "PruningConfigError",
    "available_methods",
    "check_mask_structure",
    "citation_of",
    "get_method",
    "parse_nm",
    "register_method",
]

CONFIG_NAME = "pruning_config.json"
#: the losses the gradient-based methods take (named in their error messages)
LOSS_OPTIONS = (
    "loss='labels' (cross-entropy of a classification head, needs labelled calibration data), "
    "loss='features' (label-free: gradients of <v, features> with random Gaussian v, for backbones such as "
    "Dinov2Model), or loss=<callable(model, batch) -> scalar tensor>"
)
#: what a configuration saves in place of a callable ``loss`` (a function cannot be written to JSON)
CUSTOM_LOSS = "custom"
#: the package whose sub-packages are the built-in methods (discovered, never imported by name)
BUILTIN_METHODS_PACKAGE = "hf_sparsify.methods"
#: the entry-point group through which an installed package adds methods (``my_methods = "my_pkg.methods"``)
ENTRY_POINT_GROUP = "hf_sparsify.methods"


class PruningConfigError(HfSparsifyError, ValueError):
    """A pruning configuration is invalid. The message says which field and how to fix it."""


@dataclass(frozen=True)
class Citation:
    """The paper behind a method: a display name for model cards and its BibTeX entry."""

    title: str
    bibtex: str


class MethodEntry:
    """One row of the method registry: a method's name, configuration class and pruner class.

    The pruner class may be registered as ``"module:Class"`` (``".pruner:CAPPruner"``, relative to the config's
    package): it is imported on first use, so that listing methods and their options (``hf-sparsify --help``)
    does not import torch.
    """

    def __init__(self, name: str, config_class: type, pruner: "type | str"):
        self.name, self.config_class, self._pruner = name, config_class, pruner

    @property
    def pruner_class(self) -> type:
        if isinstance(self._pruner, str):
            module_name, _, attribute = self._pruner.partition(":")
            package = self.config_class.__module__.rpartition(".")[0]
            self._pruner = getattr(importlib.import_module(module_name, package=package if module_name.startswith(".") else None), attribute)
            _check_pruner(self.name, self.config_class, self._pruner)
        return self._pruner

    def __repr__(self) -> str:
        return f"MethodEntry(name={self.name!r}, config_class={self.config_class.__name__})"


def _check_pruner(name: str, config_class: type, pruner_class: type) -> None:
    if not (isinstance(pruner_class, type) and callable(getattr(pruner_class, "prune", None)) and hasattr(pruner_class, "needs_calibration_data")):
        raise TypeError(f"the pruner of method {name!r} ({pruner_class!r}) is not a hf_sparsify.methods.base.Pruner subclass")
    if not issubclass(config_class, pruner_class.config_class):
        raise TypeError(f"the pruner of method {name!r} ({pruner_class.__name__}) takes {pruner_class.config_class.__name__}, not {config_class.__name__}")


_METHODS: dict[str, MethodEntry] = {}
_BUILTINS_LOADED = False


def register_method(name: str, config_class: type, pruner_class: "type | str") -> None:
    """Join a pruning method to the registry (one line, in the method's own ``__init__.py``).

    Args:
        name: the value of the ``method`` field in ``pruning_config.json`` and of ``--method`` on the CLI.
        config_class: the method's :class:`PruningConfig` subclass; every field carries ``metadata={"help": ...}``.
        pruner_class: the method's :class:`~hf_sparsify.methods.base.Pruner` subclass, or ``"module:Class"``
            (relative to the config's package, e.g. ``".pruner:CAPPruner"``) to import it on first use.

    Raises:
        TypeError: the classes do not follow the contract (a field without help, a ``target_field`` that is no
            field, a pruner that is not a ``Pruner``).
        ValueError: the name is taken by another configuration class.
    """
    if not (isinstance(config_class, type) and issubclass(config_class, PruningConfig)):
        raise TypeError(f"{config_class!r} is not a PruningConfig subclass")
    if not isinstance(pruner_class, str):
        _check_pruner(name, config_class, pruner_class)
    if name in _METHODS and _METHODS[name].config_class is not config_class:
        raise ValueError(f"pruning method {name!r} is already registered by {_METHODS[name].config_class.__name__}")
    undocumented = [f.name for f in dataclasses.fields(config_class) if f.init and not f.metadata.get("help")]
    if undocumented:
        raise TypeError(
            f"{config_class.__name__} fields {undocumented} have no help: declare them as "
            'field(default=..., metadata={"help": "..."}) (the CLI flags and docs are generated from it).'
        )
    if config_class.target_field not in config_class._field_names():
        raise TypeError(f"{config_class.__name__}.target_field={config_class.target_field!r} is not one of its fields")
    config_class.method = name
    _METHODS[name] = MethodEntry(name, config_class, pruner_class)


def _ensure_methods_loaded() -> None:
    """Import every sub-package of :data:`BUILTIN_METHODS_PACKAGE` and every module an installed distribution
    declares under the ``hf_sparsify.methods`` entry-point group; each registers its methods when imported."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    package = importlib.import_module(BUILTIN_METHODS_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            importlib.import_module(f"{BUILTIN_METHODS_PACKAGE}.{info.name}")
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()


def available_methods() -> list[str]:
    """The names of all registered pruning methods.

    ```python
    >>> import hf_sparsify
    >>> {"cap", "magnitude", "vbp"} <= set(hf_sparsify.available_methods())
    True
    ```
    """
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


def citation_of(method: str | None) -> Citation | None:
    """The citation a registered method declares (``None`` for an unknown or unregistered method)."""
    if not method:
        return None
    _ensure_methods_loaded()
    entry = _METHODS.get(method)
    return entry.config_class.citation if entry is not None else None


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


def check_mask_structure(mask_structure: str, sparsity: float) -> tuple[int, int] | None:
    """Validate ``mask_structure`` against ``sparsity``; returns ``(N, M)``, or ``None`` for ``"unstructured"``."""
    if mask_structure == "unstructured":
        return None
    n, m = parse_nm(mask_structure)
    implied = 1 - n / m
    if abs(sparsity - implied) > 1e-9:
        raise PruningConfigError(
            f"mask_structure={mask_structure!r} keeps {n} of every {m} weights, i.e. sparsity {implied:g}; "
            f"sparsity={sparsity} cannot be reached with it. Set sparsity={implied:g} or use mask_structure='unstructured'."
        )
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

    Subclasses are keyword-only dataclasses whose fields carry ``metadata={"help": ...}``; they validate in
    ``__post_init__`` (call ``super().__post_init__()``) and join the registry with :func:`register_method`.

    Class attributes a method declares (see the module docstring): ``target_field``, ``target_interpolable``,
    ``citation``, ``demo_settings``, ``quick_settings``.
    """

    method: ClassVar[str] = ""
    #: the field that the CLI's ``--sparsity`` and pruning schedules set (VBP: ``pruning_ratio``)
    target_field: ClassVar[str] = "sparsity"
    #: whether a gradual schedule may ramp ``target_field`` from 0 to its final value (a speed-up target may not)
    target_interpolable: ClassVar[bool] = True
    #: the paper behind the method, cited by model cards
    citation: ClassVar[Citation | None] = None
    #: the settings ``hf-sparsify demo --method <name>`` runs on the bundled ViT (about a minute on 2 CPU cores)
    demo_settings: ClassVar[dict[str, Any]] = {}
    #: settings that run in seconds on a tiny model (contract tests, docstring examples)
    quick_settings: ClassVar[dict[str, Any]] = {}
    #: settings that make the method run without labels (a backbone such as ``Dinov2Model``); ``None`` when it
    #: cannot. ``{}``: it never needs labels.
    label_free_settings: ClassVar[dict[str, Any] | None] = {}

    targets: list[str] | None = field(
        default=None,
        metadata={
            "help": "regular expressions searched in module names; matching nn.Linear / nn.Conv2d layers are pruned. "
            "Default: the prunable layers the model's adapter declares (attention projections, MLP layers, ConvNeXt "
            "pointwise and downsampling convs); give targets to prune an architecture without an adapter."
        },
    )
    ignore: list[str] | None = field(default=None, metadata={"help": "regular expressions of module names to leave dense (applied after targets)"})
    num_calibration_samples: int | None = field(
        default=None,
        metadata={
            "help": "calibration images the method reads (one pass), drawn at random with seed from a dataset; "
            "default: the method's own number"
        },
    )
    calibration_batch_size: int = field(default=32, metadata={"help": "images per calibration batch"})
    seed: int = field(default=0, metadata={"help": "seed of every random choice (calibration subsets, random projections)"})

    # ----------------------------------------------------------------------------------------- the contract
    def needs_labels(self) -> bool:
        """Whether the calibration data must carry labels (the method computes a supervised loss)."""
        return False

    def missing_labels_message(self) -> str:
        """The error shown when :meth:`needs_labels` and the calibration data has no labels."""
        return (
            f"{self.method} needs a loss, so the calibration data must have labels: give a Dataset with a label column, "
            "or batches with a 'labels' tensor."
        )

    @property
    def effective_batch_size(self) -> int:
        """Images per calibration batch, as the method will read them (gradient methods: per gradient)."""
        return self.calibration_batch_size

    def calibration_images(self) -> int | None:
        """Images the method reads in one pass over the calibration data (``None``: every image of the source)."""
        return self.num_calibration_samples

    def nm_pattern(self) -> tuple[int, int] | None:
        """``(N, M)`` when the masks keep at most N of every M consecutive weights, else ``None``."""
        return None

    @property
    def target(self) -> Any:
        """The value of ``target_field`` (the sparsity, pruning ratio or speed-up this config asks for)."""
        return getattr(self, self.target_field)

    def with_target(self, value: Any) -> "PruningConfig":
        """A validated copy with ``target_field`` set to ``value`` (what a pruning schedule's step runs)."""
        return self.replace(**{self.target_field: value})

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
    def from_pretrained(cls, source: "str | os.PathLike | dict[str, Any] | PruningConfig", **hub_kwargs) -> "PruningConfig":
        """Load a configuration from a folder or a Hub repo holding ``pruning_config.json``, a JSON file, or a dict.

        Args:
            source: a local folder, a ``pruning_config.json`` file, a Hub model id (``"me/vit-cap-50"``), a dict or
                a configuration.
            **hub_kwargs: for a Hub id, passed to ``transformers.utils.cached_file`` (``revision``, ``token``,
                ``cache_dir``, ``local_files_only``, ``subfolder``...).

        ```python
        >>> path = hf_sparsify.MagnitudeConfig(sparsity=0.3).save_pretrained(tmp_dir)
        >>> PruningConfig.from_pretrained(tmp_dir)        # or a Hub id: PruningConfig.from_pretrained("me/vit-cap-50")
        MagnitudeConfig(targets=None, ignore=None, num_calibration_samples=None, calibration_batch_size=32, seed=0, sparsity=0.3, sparsity_distribution='uniform', mask_structure='unstructured')
        ```
        """
        if isinstance(source, PruningConfig):
            return cls.from_dict(source.to_dict())
        if isinstance(source, dict):
            return cls.from_dict(source)
        path = Path(source)
        if path.is_dir():
            file = path / (hub_kwargs.get("subfolder") or "") / CONFIG_NAME
            if not file.is_file():
                raise PruningConfigError(
                    f"{path} holds no {CONFIG_NAME}: it is not a model pruned by hf_sparsify, or the file was removed."
                )
            return cls.from_json_file(file)
        if path.is_file():
            return cls.from_json_file(path)
        if not _looks_like_repo_id(str(source)):
            raise PruningConfigError(f"No pruning configuration at {path}: give a folder, a JSON file, a Hub model id or a dict.")
        from transformers.utils import cached_file

        try:
            file = cached_file(str(source), CONFIG_NAME, **hub_kwargs)
        except OSError as err:
            raise PruningConfigError(
                f"Could not get {CONFIG_NAME} of the Hub repo {source!r} ({err}). Check the id and your connection, or "
                "give a local folder."
            ) from None
        return cls.from_json_file(file)

    # ----------------------------------------------------------------------------------------- conveniences
    def replace(self, **changes) -> "PruningConfig":
        """A validated copy with some fields changed (``config.replace(sparsity=0.7)``)."""
        type(self)._check_keys(changes)
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.init)
        return f"{type(self).__name__}({fields})"


def _looks_like_repo_id(value: str) -> bool:
    """``"name"`` or ``"namespace/name"`` in the Hub's alphabet, and not a path (``./x``, ``/x``, ``~/x``)."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", value) is not None


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class LossFieldMixin:
    """For the configurations of gradient methods with a ``loss`` field (``"labels"``, a label-free loss, or a
    callable): labels are needed exactly for ``loss="labels"``, and a callable loss is saved as
    :data:`CUSTOM_LOSS`. Put it before :class:`PruningConfig` in the bases; ``loss_options`` is the sentence naming
    the method's losses in its errors."""

    loss_options: ClassVar[str] = LOSS_OPTIONS
    #: the label-free loss named when a saved custom loss must be passed again
    label_free_loss: ClassVar[str] = "features"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if callable(self.loss):
            out["loss"] = CUSTOM_LOSS
        return out

    def needs_labels(self) -> bool:
        return self.loss == "labels"

    def missing_labels_message(self) -> str:
        return f"{self.method} with loss='labels' needs calibration data with labels, and it has none: use {self.loss_options}."

    def check_loss_is_usable(self) -> None:
        """Refuse a configuration reloaded with :data:`CUSTOM_LOSS` in place of the function it was saved with."""
        if self.loss == CUSTOM_LOSS:
            raise PruningConfigError(
                "This configuration was saved with a custom loss function, which cannot be stored: pass it again, "
                f"e.g. config.replace(loss=my_loss_fn), or use loss='labels' / loss='{self.label_free_loss}'."
            )
