"""A throwaway method that lives in this one folder and joins the registry with the one line below: the proof that
a new method needs no other file touched (tests/test_contract.py)."""

from hf_sparsify.configuration import register_method

from .config import RandomConfig

register_method("throwaway-random", RandomConfig, ".pruner:RandomPruner")
