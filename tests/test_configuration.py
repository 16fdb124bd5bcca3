import json

import pytest

import hf_sparsify
from hf_sparsify import MagnitudeConfig, PruningConfig, PruningConfigError
from hf_sparsify.configuration import CONFIG_NAME, available_methods, get_method, parse_nm


def test_round_trip_through_directory(tmp_path):
    config = MagnitudeConfig(sparsity=0.7, sparsity_distribution="global", ignore=[r"layers\.0\."])
    path = config.save_pretrained(tmp_path)
    assert path.endswith(CONFIG_NAME)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert data["method"] == "magnitude" and data["sparsity"] == 0.7 and data["hf_sparsify_version"] == hf_sparsify.__version__
    loaded = PruningConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MagnitudeConfig) and loaded == config
    assert PruningConfig.from_pretrained(tmp_path / CONFIG_NAME) == config
    assert PruningConfig.from_pretrained(config.to_dict()) == config
    assert MagnitudeConfig.from_pretrained(tmp_path) == config
    assert json.loads(config.to_json_string())["sparsity_distribution"] == "global"


def test_registry_lists_magnitude_and_dispatches():
    assert "magnitude" in available_methods()
    assert get_method("magnitude").config_class is MagnitudeConfig
    with pytest.raises(PruningConfigError, match="Did you mean 'magnitude'"):
        get_method("magnitud")


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range(sparsity):
    with pytest.raises(PruningConfigError, match=r"sparsity must be in \[0, 1\)"):
        MagnitudeConfig(sparsity=sparsity)


def test_unknown_key_suggests_nearest():
    with pytest.raises(PruningConfigError, match="unknown key 'sparsty'.*Did you mean 'sparsity'"):
        MagnitudeConfig(sparsty=0.5)
    with pytest.raises(PruningConfigError, match="unknown key 'sparsity_distrib'.*'sparsity_distribution'"):
        PruningConfig.from_dict({"method": "magnitude", "sparsity_distrib": "global"})


def test_wrong_types_and_choices():
    with pytest.raises(PruningConfigError, match="sparsity must be of type float"):
        MagnitudeConfig(sparsity="0.5")
    with pytest.raises(PruningConfigError, match="not one of"):
        MagnitudeConfig(sparsity_distribution="globl")
    with pytest.raises(PruningConfigError, match="invalid regular expression"):
        MagnitudeConfig(targets=["(unclosed"])
    with pytest.raises(TypeError, match="keyword arguments only"):
        MagnitudeConfig(0.5)


def test_nm_structure_fixes_the_sparsity():
    assert MagnitudeConfig(sparsity=0.5, mask_structure="2:4").nm == (2, 4)
    with pytest.raises(PruningConfigError, match="cannot be reached"):
        MagnitudeConfig(sparsity=0.7, mask_structure="2:4")
    with pytest.raises(PruningConfigError, match="not understood"):
        parse_nm("two:four")
    with pytest.raises(PruningConfigError, match="0 < N < M"):
        parse_nm("4:2")


def test_unreadable_and_wrong_method_files(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CONFIG_NAME).write_text("{not json")
    with pytest.raises(PruningConfigError, match="not valid JSON"):
        PruningConfig.from_pretrained(bad)
    with pytest.raises(PruningConfigError, match="holds no pruning_config.json"):
        PruningConfig.from_pretrained(tmp_path)
    nomethod = tmp_path / "nomethod.json"
    nomethod.write_text(json.dumps({"sparsity": 0.5}))
    with pytest.raises(PruningConfigError, match="no 'method' field"):
        PruningConfig.from_pretrained(nomethod)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"method": "nonexistent", "sparsity": 0.5}))
    with pytest.raises(PruningConfigError, match="Unknown pruning method"):
        PruningConfig.from_pretrained(unknown)
    with pytest.raises(PruningConfigError, match="No pruning configuration"):
        PruningConfig.from_pretrained(tmp_path / "missing.json")


def test_subclass_refuses_other_method():
    class Other(PruningConfig):
        pass

    from dataclasses import dataclass

    Other = dataclass(kw_only=True)(Other)
    Other.method = "other-test-method"
    with pytest.raises(PruningConfigError, match="for method 'magnitude'"):
        Other.from_dict({"method": "magnitude", "sparsity": 0.5})


def test_replace_validates():
    config = MagnitudeConfig(sparsity=0.5)
    assert config.replace(sparsity=0.6).sparsity == 0.6
    with pytest.raises(PruningConfigError):
        config.replace(sparsity=2.0)
    with pytest.raises(PruningConfigError, match="unknown key"):
        config.replace(sparsityy=0.1)
