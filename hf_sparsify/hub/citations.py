"""The paper behind each pruning method: a display name and the BibTeX a model card cites.

A method registered elsewhere can add its own entry with :func:`register_citation`; names are matched exactly,
then by their first word (``"cap-nm"`` cites CAP).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MethodCitation", "get_citation", "register_citation"]


@dataclass(frozen=True)
class MethodCitation:
    title: str
    bibtex: str


_CITATIONS: dict[str, MethodCitation] = {
    "magnitude": MethodCitation(
        "magnitude pruning",
        """@inproceedings{han2015learning,
  title     = {Learning both Weights and Connections for Efficient Neural Networks},
  author    = {Han, Song and Pool, Jeff and Tran, John and Dally, William J.},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2015},
  eprint    = {1506.02626},
  archivePrefix = {arXiv}
}

@article{zhu2017prune,
  title   = {To prune, or not to prune: exploring the efficacy of pruning for model compression},
  author  = {Zhu, Michael and Gupta, Suyog},
  journal = {arXiv preprint arXiv:1710.01878},
  year    = {2017}
}""",
    ),
    "cap": MethodCitation(
        "CAP (Correlation-Aware Pruning)",
        """@inproceedings{kuznedelev2023cap,
  title     = {{CAP}: Correlation-Aware Pruning for Highly-Accurate Sparse Vision Models},
  author    = {Kuznedelev, Denis and Kurtic, Eldar and Frantar, Elias and Alistarh, Dan},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023},
  eprint    = {2210.09223},
  archivePrefix = {arXiv}
}""",
    ),
    "woodfisher": MethodCitation(
        "WoodFisher",
        """@inproceedings{singh2020woodfisher,
  title     = {{WoodFisher}: Efficient Second-Order Approximation for Neural Network Compression},
  author    = {Singh, Sidak Pal and Alistarh, Dan},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2020},
  eprint    = {2004.14340},
  archivePrefix = {arXiv}
}""",
    ),
    "vbp": MethodCitation(
        "VBP (Variance-Based Pruning)",
        """@inproceedings{berisha2025vbp,
  title     = {Variance-Based Pruning for Accelerating and Compressing Trained Networks},
  author    = {Berisha, Uranik and Mehnert, Jens and Condurache, Alexandru Paul},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025},
  eprint    = {2507.12988},
  archivePrefix = {arXiv}
}""",
    ),
    "sosp": MethodCitation(
        "SOSP (Second-Order Structured Pruning)",
        """@inproceedings{nonnenmacher2022sosp,
  title     = {{SOSP}: Efficiently Capturing Global Correlations by Second-Order Structured Pruning},
  author    = {Nonnenmacher, Manuel and Pfeil, Thomas and Steinwart, Ingo and Reeb, David},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022},
  eprint    = {2110.11395},
  archivePrefix = {arXiv}
}""",
    ),
    "spdy": MethodCitation(
        "SPDY (speedup-constrained sparsity)",
        """@inproceedings{frantar2022spdy,
  title     = {{SPDY}: Accurate Pruning with Speedup Guarantees},
  author    = {Frantar, Elias and Alistarh, Dan},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning (ICML)},
  year      = {2022},
  eprint    = {2201.13096},
  archivePrefix = {arXiv}
}""",
    ),
}


# FastCAP is CAP's variant for large models, released with CAP's code: it cites the CAP paper.
_CITATIONS["fastcap"] = MethodCitation("FastCAP (CAP's variant for large models)", _CITATIONS["cap"].bibtex)


def register_citation(method: str, title: str, bibtex: str) -> None:
    """Give a method's display name and BibTeX to the model cards of models it pruned."""
    _CITATIONS[method] = MethodCitation(title, bibtex.strip())


def get_citation(method: str | None) -> MethodCitation | None:
    """The citation of ``method`` (exact name, then its first word), or ``None`` when unknown."""
    if not method:
        return None
    if method in _CITATIONS:
        return _CITATIONS[method]
    first = re.split(r"[-_:+ ]", method.lower())[0]
    return _CITATIONS.get(first)
