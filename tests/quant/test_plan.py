"""Plans: component bits, overrides (last match wins), float defaults, JSON errors naming the field."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_model
from whisper_kdq.errors import UserError
from whisper_kdq.quant.plan import load_plan, plan_from_options


@pytest.fixture(scope="module")
def state():
    return tiny_model().state_dict()


def test_defaults_and_components(state):
    specs = plan_from_options(bits=4, component_bits={"encoder": 8, "embedding": 0}).resolve(state)
    assert "model.decoder.layers.0.fc1.bias" not in specs  # biases and norms are never candidates
    assert specs["model.encoder.embed_positions.weight"] is None and specs["model.decoder.embed_tokens.weight"] is None
    assert specs["model.encoder.layers.0.fc1.weight"].bits == 8
    assert specs["model.decoder.layers.1.self_attn.q_proj.weight"].short == "uniform4g128s"
    assert specs["model.encoder.conv1.weight"].bits == 8  # conv front-end defaults to 8 bits
    assert plan_from_options(bits=8).default.granularity == "per-channel"


def test_overrides_last_match_wins(state):
    plan = plan_from_options(bits=4, scheme="apot", overrides=["fc1=3", r"decoder\.layers\.1\.fc1=float",
                                                               "k_proj=uniform6c"])
    specs = plan.resolve(state)
    assert specs["model.encoder.layers.0.fc1.weight"].short == "apot3g128a"
    assert specs["model.decoder.layers.1.fc1.weight"] is None
    assert specs["model.decoder.layers.0.self_attn.k_proj.weight"].short == "uniform6cs"


def test_rules_on_a_full_range_default_keep_it_unless_they_change_the_grid(tmp_path, state):
    plan = plan_from_options(bits=3, full_range=True, overrides=["fc1=2", "k_proj=uniform4g64s", "v_proj=apot3c",
                                                                 "q_proj=uniform3ca"])
    specs = plan.resolve(state)
    assert specs["model.encoder.layers.0.fc2.weight"].short == "uniform3g128f"
    assert specs["model.encoder.layers.0.fc1.weight"].short == "uniform2g128f"  # bits only: still full range
    assert specs["model.decoder.layers.0.self_attn.k_proj.weight"].short == "uniform4g64s"
    assert specs["model.decoder.layers.0.self_attn.v_proj.weight"].short == "apot3ca"
    assert specs["model.decoder.layers.0.self_attn.q_proj.weight"].short == "uniform3ca"
    (tmp_path / "p.json").write_text(json.dumps({"default": {"bits": 2, "group_size": 64, "full_range": True},
                                                 "rules": [{"pattern": "fc2", "symmetric": False}]}))
    specs = load_plan(tmp_path / "p.json").resolve(state)
    assert specs["model.encoder.layers.0.fc1.weight"].short == "uniform2g64f"
    assert specs["model.encoder.layers.0.fc2.weight"].short == "uniform2g64a"


@pytest.mark.parametrize("override, match", [("fc1=9", "bits must be"), ("(=4", "bad regex"), ("fc1", "REGEX=BITS"),
                                             ("fc1=int4", "bad quantization spec")])
def test_bad_overrides(override, match):
    with pytest.raises(UserError, match=match):
        plan_from_options(bits=4, overrides=[override])


def test_plan_file_round_trip(tmp_path, state):
    plan = plan_from_options(bits=4, scheme="apot", component_bits={"encoder": 8}, overrides=["fc2=float"])
    plan.save(tmp_path / "plan.json")
    again = load_plan(tmp_path / "plan.json")
    assert again.resolve(state) == plan.resolve(state)


@pytest.mark.parametrize("doc, match", [
    ({"default": {"bits": 12}}, r"default: bits must be"),
    ({"default": {"bits": "4"}}, r"default\.bits: expected an integer"),
    ({"rules": [{"pattern": "fc1", "bitz": 3}]}, r"rules\[0\]: unknown field 'bitz'"),
    ({"rules": [{"bits": 3}]}, r"rules\[0\]\.pattern"),
    ({"rules": [{"pattern": "fc1"}]}, r"rules\[0\]: give at least one"),
    ({"version": 7}, r"\.version: unsupported"),
    ({"clip": "best"}, r"\.clip: expected"),
    ({"default": {"bits": 3, "full_range": 1}}, r"default\.full_range: expected true or false"),
])
def test_plan_json_errors_name_the_field(tmp_path, doc, match):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=match):
        load_plan(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_plan(path)
