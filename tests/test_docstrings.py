"""Every docstring example of the package runs: the ``>>>`` examples of every module, class, function and method
docstring (inside ```python fences or not) are executed as doctests (outputs compared, ``...`` matches anything).

As in ``doctest``, an example sees the globals of its module; besides, these names are set up fresh for each: ``model`` (the bundled trained tiny ViT),
``processor`` (its image processor), ``calibration`` (the bundled 1,000-image CIFAR-10 calibration ``Dataset``),
``tmp_dir`` (an empty temporary folder, a ``pathlib.Path``), ``torch`` and ``hf_sparsify``.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import inspect
import pkgutil
import re

import pytest
import torch

import hf_sparsify

_FENCE_LINE = re.compile(r"^\s*```\w*\s*$", re.M)
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules():
    yield hf_sparsify
    for info in pkgutil.walk_packages(hf_sparsify.__path__, "hf_sparsify."):
        if info.name.rpartition(".")[2] != "__main__":  # importing ``python -m`` entry points would run them
            yield importlib.import_module(info.name)


def _documented(module):
    """``(qualified name, docstring)`` of the module and of what it defines (classes, functions, methods)."""
    yield module.__name__, module.__doc__
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__ or name.startswith("_"):
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj.__doc__
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                target = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if (inspect.isfunction(target) or isinstance(member, property)) and target.__doc__ and (not attr.startswith("_") or attr == "__call__"):
                    yield f"{module.__name__}.{name}.{attr}", target.__doc__


def _examples():
    seen = set()
    for module in _modules():
        for qualname, doc in _documented(module):
            if not doc or qualname in seen:
                continue
            seen.add(qualname)
            text = _FENCE_LINE.sub("", inspect.cleandoc(doc))  # a fence line would read as an example's output
            if ">>>" in text:
                yield pytest.param(module.__name__, qualname, text, id=qualname)


EXAMPLES = list(_examples())


@pytest.fixture(scope="module")
def _assets(demo_model, demo_processor, demo_calibration):
    return demo_model, demo_processor, demo_calibration


def test_the_package_has_examples():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("module_name, qualname, block", EXAMPLES)
def test_docstring_example_runs(module_name, qualname, block, _assets, tmp_path):
    model, processor, calibration = _assets
    globs = {
        **vars(importlib.import_module(module_name)),
        "model": copy.deepcopy(model),
        "processor": processor,
        "calibration": calibration,
        "tmp_dir": tmp_path,
        "torch": torch,
        "hf_sparsify": hf_sparsify,
    }
    test = doctest.DocTestParser().get_doctest(block, globs, qualname, qualname, 0)
    runner = doctest.DocTestRunner(optionflags=_FLAGS, verbose=False)
    messages: list[str] = []
    runner.run(test, out=messages.append)
    failed = runner.summarize(verbose=False).failed
    assert not failed, f"the docstring example of {qualname} fails:\n" + "".join(messages)
