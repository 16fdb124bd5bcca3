import pytest


@pytest.fixture
def register_test_method():
    """Register a pruning method for one test (removed afterwards so the registry and the CLI stay unchanged)."""
    from hf_sparsify import configuration

    added = []

    def register(name, config_class, pruner_class):
        configuration.register_method(name, config_class, pruner_class)
        added.append(name)

    yield register
    for name in added:
        configuration._METHODS.pop(name, None)
