"""The files of a pruned model: the saved record (:mod:`.summary`), writing them as one unit (:mod:`.save`),
strict loading (:mod:`.load`) and the compact sparse checkpoint format (:mod:`.compressed`).

The public ``save_pretrained`` (files + model card) is :func:`hf_sparsify.save_pretrained`, in
:mod:`hf_sparsify.pruned`, above this package and :mod:`hf_sparsify.hub`.
"""

from .compressed import COMPRESSED_WEIGHTS_NAME, compress_checkpoint, load_compressed, save_compressed
from .load import SparseCheckpointError, from_pretrained_strict
from .save import StagedFolder, is_weights_file, write_model_files
from .summary import SUMMARY_NAME, read_summary, record_card_data

__all__ = [
    "COMPRESSED_WEIGHTS_NAME",
    "SUMMARY_NAME",
    "SparseCheckpointError",
    "StagedFolder",
    "compress_checkpoint",
    "from_pretrained_strict",
    "is_weights_file",
    "load_compressed",
    "read_summary",
    "record_card_data",
    "save_compressed",
    "write_model_files",
]
