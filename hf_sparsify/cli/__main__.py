"""``python -m hf_sparsify.cli``: the ``hf-sparsify`` command."""

import sys

from .parser import main

sys.exit(main())
