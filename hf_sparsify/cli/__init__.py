"""The ``hf-sparsify`` command line.

```
hf-sparsify prune MODEL --method METHOD --sparsity S [--config FILE] [--calibration DATA] --output DIR [--overwrite]
                  [--dtype auto|float32|bfloat16|float16] [--save-dtype D] [--device DEV] [--compressed]
                  [--push-to-hub REPO [--private]] [every option of the method's configuration: --fisher-block-size...]
hf-sparsify evaluate MODEL --data DATA [--split test] [--limit N] [--batch-size B] [--dtype D] [--device DEV]
hf-sparsify report MODEL [--json] [--dtype D]
hf-sparsify card DIR [--repo-id REPO] [--metrics FILE] [--template FILE] [--force]
hf-sparsify push DIR REPO [--private] [--compressed] [--commit-message M]
hf-sparsify benchmark MODEL [--baseline MODEL] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--batch-size B]
                      [--image-size N] [--runtime eager|compile|onnxruntime|semi-structured]
hf-sparsify export MODEL OUTPUT [--image-size N] [--dtype D] [--opset N] [--no-verify] [--overwrite]
hf-sparsify card DIR --benchmark [--baseline MODEL] [--device D] [--dtype D] [--batch-size B] [--runtime R]
hf-sparsify demo [--method M] [--sparsity S] [--output DIR]
```

The same commands run as ``optimum-cli sparsify prune ...`` when optimum is installed. MODEL is a Hub id or a
local folder; DATA is a Hub dataset id, a ``datasets`` folder, a parquet file, a folder of split-named parquet
files, or an image folder. User errors print one ``error: ...`` line and exit with status 2.

The package: :mod:`.parser` (the parser and the entry point), :mod:`.options` (``prune``'s method options,
generated from the configuration dataclasses), :mod:`.commands` (one function per command; heavy imports inside),
:mod:`.speed` (``benchmark``, ``export`` and ``card --benchmark``).
"""

from .commands import CLIError
from .parser import build_parser, main

__all__ = ["CLIError", "build_parser", "main"]
