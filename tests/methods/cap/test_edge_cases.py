"""Edge cases of the CAP family against the float64 oracles, at the default precision: N:M 1:4, 4:8 and 2:8,
sparsity 0.99 (blocks that lose their last weights), through the whole pipeline."""

import numpy as np
import pytest

import hf_sparsify
from hf_sparsify import CAPConfig, FastCAPConfig, WoodFisherConfig
from tests import oracles
from tests.conftest import make_tiny_model, tiny_batches
from tests.methods.cap.helpers import rel_err
from tests.methods.cap.test_pruner import TARGETS, _check_against, _layers, _oracle_inputs


@pytest.fixture(scope="module")
def case():
    model = make_tiny_model("vit")
    return model, tiny_batches(model, num_batches=24, batch=2)


def _fastcap_expected(model, config, batches, block):
    layers = _layers(model, config)
    grads = {l.name: [] for l in layers}
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for l in layers:
            grads[l.name].append(l.weight.grad.reshape(-1, block).double().numpy())
    model.zero_grad()
    out = []
    for layer in layers:
        g = np.stack(grads[layer.name])
        out.append(oracles.fastcap_prune(layer.weight.detach().reshape(-1, block).double().numpy(), np.einsum("mrb,mrc->bc", g, g), len(batches), config.sparsity, config.damp, nm=config.nm))
    return out


@pytest.mark.parametrize("structure", ["1:4", "4:8", "2:8"])
@pytest.mark.parametrize("method", ["cap", "woodfisher", "fastcap"])
def test_nm_patterns_equal_the_oracles(case, method, structure):
    model, batches = case
    n, m = (int(x) for x in structure.split(":"))
    cls = {"cap": CAPConfig, "woodfisher": WoodFisherConfig, "fastcap": FastCAPConfig}[method]
    config = cls(sparsity=1 - n / m, mask_structure=structure, targets=TARGETS, fisher_block_size=16, num_grads=24)
    pruned = hf_sparsify.prune(model, config, batches)
    for layer in _layers(pruned, config):
        assert ((layer.weight != 0).reshape(-1, m).sum(1) <= n).all()
    if method == "fastcap":
        for new, expected in zip(_layers(pruned, config), _fastcap_expected(model, config, batches, 16)):
            got = new.weight.detach().reshape(-1, 16).double().numpy()
            assert np.array_equal(got == 0, expected == 0) and rel_err(got, expected) < 1e-6
        return
    inputs = _oracle_inputs(model, config, batches)
    layers = [(w, f) for w, f, _ in inputs]
    expected = oracles.cap_prune_layers(layers, 0, nm=(m, m - n)) if method == "cap" else oracles.woodfisher_nm_prune_layers(layers, (n, m))
    _check_against(pruned, model, config, expected, inputs, tol=1e-6)


@pytest.mark.parametrize("distribution", ["global", "uniform"])
@pytest.mark.parametrize("method", ["cap", "woodfisher", "fastcap"])
def test_sparsity_099_removes_the_last_weights_of_blocks(case, method, distribution):
    model, batches = case
    if method == "fastcap" and distribution == "global":
        pytest.skip("FastCAP is uniform per layer by design")
    cls = {"cap": CAPConfig, "woodfisher": WoodFisherConfig, "fastcap": FastCAPConfig}[method]
    config = cls(sparsity=0.99, sparsity_distribution=distribution, targets=TARGETS, fisher_block_size=16, num_grads=24)
    pruned = hf_sparsify.prune(model, config, batches)
    layers = _layers(pruned, config)
    if method == "fastcap":
        for new, expected in zip(layers, _fastcap_expected(model, config, batches, 16)):
            got = new.weight.detach().reshape(-1, 16).double().numpy()
            assert np.array_equal(got == 0, expected == 0) and rel_err(got, expected) < 1e-6
        return
    inputs = _oracle_inputs(model, config, batches)
    sizes = [w.size for w, _, _ in inputs]
    k = round(0.99 * sum(sizes)) if distribution == "global" else [round(0.99 * s) for s in sizes]
    fn = oracles.cap_prune_layers if method == "cap" else oracles.woodfisher_prune_layers
    if method == "woodfisher" and distribution == "uniform":
        expected = [fn([(w, f)], kk)[0] for (w, f, _), kk in zip(inputs, k)]
    else:
        expected = fn([(w, f) for w, f, _ in inputs], k)
    _check_against(pruned, model, config, expected, inputs, tol=1e-6)
    blocks = [layout.to_blocks(l.weight.detach()) for l, (_, _, layout) in zip(layers, inputs)]
    assert any(bool((b == 0).all(1).any()) for b in blocks)  # some blocks lost every weight
    assert sum(int((b == 0).sum()) for b in blocks) == (k if isinstance(k, int) else sum(k))
