"""The one base of every hf_sparsify error.

Each domain error is defined next to the code that raises it and subclasses both :class:`HfSparsifyError` and
the builtin exception it has always been (``ValueError``, ``RuntimeError``...), so existing ``except ValueError``
code keeps working and a caller (the CLI) can catch every hf_sparsify error with one type:

```python
>>> from hf_sparsify import HfSparsifyError, MagnitudeConfig
>>> try:
...     MagnitudeConfig(sparsity=1.5)
... except HfSparsifyError as err:
...     print(type(err).__name__)
PruningConfigError
```
"""

from __future__ import annotations

__all__ = ["HfSparsifyError"]


class HfSparsifyError(Exception):
    """Base of the errors hf_sparsify raises on purpose; the message names the problem and the fix."""
