"""``hf-sparsify prune``'s method options, generated from the configuration dataclasses of the registered methods.

Every init field of every registered method's configuration becomes one ``--flag`` (``fisher_block_size`` →
``--fisher-block-size``), typed by its annotation (``int``, ``float``, ``str``, ``bool`` → ``--flag/--no-flag``,
``list[str]`` → several values, ``Optional[...]`` also takes ``none``; a field that also takes a callable, such as
``loss``, takes its string choices) and documented by its ``metadata["help"]``. ``--help`` groups the flags by
the methods that take them; a flag the chosen method does not take is refused, naming the methods that do.
The values are converted by the chosen method's own annotation, so two methods may give a field different types.

transformers' ``HfArgumentParser`` builds one parser per dataclass; here one ``prune`` command serves every method
(fields shared by several methods become one flag) and ``--help`` must not import transformers, hence this small
generator. It reads only the dataclass fields and the ``target_field`` each configuration declares.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from ..configuration import PruningConfig, PruningConfigError, available_methods, get_method

__all__ = ["MethodOption", "TARGET_FLAG", "add_method_options", "method_overrides"]

#: the flag that sets each method's ``target_field`` (its sparsity, pruning ratio...)
TARGET_FLAG = "--sparsity"
#: prefix of a generated flag whose plain name is taken by one of the command's own options
COLLISION_PREFIX = "--pruning-"
_DEST_PREFIX = "method_option__"


@dataclass
class MethodOption:
    """One generated flag: a configuration field name, and the methods (with their dataclass fields) taking it."""

    name: str
    flag: str
    fields: dict[str, dataclasses.Field]  # method -> its field
    hints: dict[str, Any]  # method -> the field's resolved annotation

    @property
    def dest(self) -> str:
        return _DEST_PREFIX + self.name

    @property
    def methods(self) -> list[str]:
        return sorted(self.fields)


# --------------------------------------------------------------------------------------------- types
def _is_callable_type(annotation: Any) -> bool:
    return collections.abc.Callable in (annotation, typing.get_origin(annotation))


def _shape(annotation: Any) -> tuple[str, Any, bool]:
    """``(kind, detail, optional)``: kind is ``bool``, ``int``, ``float``, ``str``, ``choice`` (detail: the
    choices), ``list`` (detail: the element's kind) or ``json``."""
    optional = False
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        members = [a for a in members if not _is_callable_type(a)] or members  # a callable field takes its strings
        if len(members) != 1:
            return "json", None, optional
        annotation = members[0]
    if annotation in (bool, int, float, str):
        return annotation.__name__, None, optional
    if typing.get_origin(annotation) is typing.Literal:
        return "choice", tuple(typing.get_args(annotation)), optional
    if typing.get_origin(annotation) in (list, tuple) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        element = _shape(args[0])[0] if args and args[0] is not Ellipsis else "str"
        return "list", element, optional
    return "json", None, optional


_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "choice": "CHOICE", "json": "JSON", "bool": None}


def _convert_one(text: str, kind: str, detail: Any, flag: str, method: str) -> Any:
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "json":
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("true", "yes", "1"):
                return True
            if lowered in ("false", "no", "0"):
                return False
            raise ValueError
    except ValueError:
        raise PruningConfigError(f"{flag} expects {'an integer' if kind == 'int' else 'a number' if kind == 'float' else 'true or false'} for {method}, got {text!r}.") from None
    if kind == "choice" and text not in detail:
        raise PruningConfigError(f"{flag} for {method} takes one of {list(detail)}, got {text!r}.")
    return text


def _convert(value: Any, annotation: Any, flag: str, method: str) -> Any:
    kind, detail, optional = _shape(annotation)
    if isinstance(value, bool):  # a --flag/--no-flag switch
        return value
    if isinstance(value, list):
        if optional and [v.lower() for v in value] == ["none"]:
            return None
        if kind != "list":
            if len(value) != 1:
                raise PruningConfigError(f"{flag} takes one value for {method}, got {len(value)}: {' '.join(value)}.")
            value = value[0]
        else:
            return [_convert_one(v, detail, None, flag, method) for v in value]
    if optional and str(value).lower() == "none":
        return None
    return _convert_one(str(value), kind, detail, flag, method)


# --------------------------------------------------------------------------------------------- building
def _config_classes() -> dict[str, type[PruningConfig]]:
    return {name: get_method(name).config_class for name in available_methods()}


def collect_method_options(reserved: set[str]) -> list[MethodOption]:
    """One :class:`MethodOption` per distinct field name over every registered method, in declaration order.

    A method's ``target_field`` named ``sparsity`` is served by :data:`TARGET_FLAG` itself; a field whose flag is
    one of ``reserved`` (the command's own options) gets the :data:`COLLISION_PREFIX`.
    """
    options: dict[str, MethodOption] = {}
    for method, config_class in _config_classes().items():
        hints = typing.get_type_hints(config_class)
        for f in dataclasses.fields(config_class):
            if not f.init:
                continue
            flag = "--" + f.name.replace("_", "-")
            if flag == TARGET_FLAG and config_class.target_field == f.name:
                continue
            if flag in reserved:
                flag = COLLISION_PREFIX + f.name.replace("_", "-")
            option = options.setdefault(f.name, MethodOption(f.name, flag, {}, {}))
            option.fields[method] = f
            option.hints[method] = hints.get(f.name, Any)
    return list(options.values())


def _default_text(f: dataclasses.Field) -> str | None:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return None
    if value is None or callable(value):
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _help(option: MethodOption) -> str:
    helps: dict[str, list[str]] = {}
    for method, f in sorted(option.fields.items()):
        helps.setdefault(f.metadata.get("help", ""), []).append(method)
    if len(helps) == 1:
        text = next(iter(helps))
    else:
        text = "; ".join(f"{', '.join(methods)}: {h}" for h, methods in helps.items())
    defaults: dict[str | None, list[str]] = {}
    for method, f in sorted(option.fields.items()):
        defaults.setdefault(_default_text(f), []).append(method)
    if len(defaults) == 1:
        default = next(iter(defaults))
        if default is not None:
            text += f" (default: {default})"
    else:
        text += " (default: " + "; ".join(f"{d if d is not None else 'none'} for {', '.join(m)}" for d, m in defaults.items()) + ")"
    return text.replace("%", "%%")


def add_method_options(parser: argparse.ArgumentParser, reserved: set[str]) -> list[MethodOption]:
    """Add the generated flags to ``parser`` in argument groups named by the methods that take them."""
    options = collect_method_options(reserved)
    every = sorted(_config_classes())
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    ordered = sorted(options, key=lambda o: (-len(o.fields), o.methods))
    for option in ordered:
        key = tuple(option.methods)
        if key not in groups:
            title = "options of every method" if list(key) == every else f"options of {', '.join(key)}"
            groups[key] = parser.add_argument_group(title)
        kinds = {_shape(h)[0] for h in option.hints.values()}
        kwargs: dict[str, Any] = {"dest": option.dest, "default": None, "help": _help(option)}
        if kinds == {"bool"}:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kind, detail, _ = _shape(next(iter(option.hints.values())))
            if kinds == {"list"}:
                kwargs["nargs"] = "+"
                kwargs["metavar"] = "VALUE"
            else:
                kwargs["metavar"] = _METAVARS.get(kind, "VALUE") if len(kinds) == 1 else "VALUE"
        groups[key].add_argument(option.flag, **kwargs)
    return options


def method_overrides(args: argparse.Namespace, options: list[MethodOption], method: str) -> dict[str, Any]:
    """The fields the user set with generated flags, converted for ``method``; a flag ``method`` does not take is
    refused with the methods that do."""
    overrides: dict[str, Any] = {}
    for option in options:
        value = getattr(args, option.dest, None)
        if value is None:
            continue
        if method not in option.fields:
            raise PruningConfigError(
                f"{option.flag} is not an option of {method}; it is an option of {', '.join(option.methods)}. "
                f"`hf-sparsify prune --help` lists the options of each method."
            )
        overrides[option.name] = _convert(value, option.hints[method], option.flag, method)
    return overrides


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number ≥ 1 (``--batch-size``, ``--limit``, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value
