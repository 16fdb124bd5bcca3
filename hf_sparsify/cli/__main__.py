"""``python -m hf_sparsify.cli``: the ``hf-sparsify`` command."""

import sys

from .parser import main

if __name__ == "__main__":  # importing the module (the docstring tests walk every module) runs nothing
    sys.exit(main())
