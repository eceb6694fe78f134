import pytest

from fromzero.config import ConfigError, load_config, preset_names
from fromzero.plan import describe


def test_presets_exist_and_load():
    assert {"smoke", "tiny", "small", "gpt2"} <= set(preset_names())
    for name in preset_names():
        assert load_config(name).preset == name


def test_text_preset_trains_on_own_text_under_a_time_budget():
    cfg = load_config("text", ["data.sources=[book.txt]", "data.val_sources=[val.txt]"])
    assert cfg.preset == "text" and cfg.data.sources == ["book.txt"] and cfg.data.val_sources == ["val.txt"]
    assert cfg.pretrain.time_budget == 120 and cfg.pretrain.accumulation(1) >= 1
    assert describe(cfg)["pretrain_steps"] == "fixed by the probe (probe_steps, probe_fraction of the budget)"
    assert load_config("text", ["pretrain.time_budget=8m"]).pretrain.time_budget == 480
    assert cfg.pretrain.dropout == 0.1 and cfg.sft.dropout == 0.0
    with pytest.raises(ConfigError, match=r"config key 'ppo.dropout'"):  # RL's ratios need deterministic log-probs
        load_config("text", ["ppo.dropout=0.1"])
    with pytest.raises(ConfigError, match=r"config key 'pretrain.dropout'"):
        load_config("text", ["pretrain.dropout=1"])


def test_overrides_are_typed():
    cfg = load_config(
        "smoke", ["pretrain.steps=7", "pretrain.lr=1e-4", "data.sources=[a.txt, b.txt]", "model.tie_embeddings=false"]
    )
    assert cfg.pretrain.steps == 7 and cfg.pretrain.lr == 1e-4
    assert cfg.data.sources == ["a.txt", "b.txt"] and cfg.model.tie_embeddings is False


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config("smoke", ["pretrain.stepz=3"])
    msg = str(e.value)
    assert "unknown config key 'pretrain.stepz'" in msg and "steps" in msg and "batch_tokens" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="valid keys in the top level: preset, seed, world"):
        load_config("smoke", ["pretrian.steps=3"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"config key 'pretrain.steps'.*integer.*'many'"):
        load_config("smoke", ["pretrain.steps=many"])
    with pytest.raises(ConfigError, match="pretrain.precision"):
        load_config("smoke", ["pretrain.precision=fp8"])


def test_bad_override_syntax_and_unknown_preset():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("smoke", ["pretrain.steps"])
    with pytest.raises(ConfigError, match="available: .*smoke"):
        load_config("nope")


@pytest.mark.parametrize(
    "preset,world_size,min_params,max_params",
    [
        ("smoke", 1, 5e4, 5e5),
        ("tiny", 1, 3e6, 2e7),
        ("text", 1, 5e5, 2e6),
        ("small", 1, 2e7, 1e8),
        ("gpt2", 8, 1.1e8, 1.6e8),
    ],
)
def test_every_preset_builds_its_model_and_data_plan(preset, world_size, min_params, max_params):
    import torch

    from fromzero.model import Transformer

    cfg = load_config(preset)
    plan = describe(cfg, world_size=world_size)
    assert min_params <= plan["params"] <= max_params
    assert plan["tokens_per_step"] == cfg.pretrain.batch_tokens and plan["accumulation_steps"] >= 1
    with torch.device("meta"):  # the real module, no memory
        model = Transformer(cfg.model.model_copy(update={"vocab_size": cfg.data.vocab_size}))
    assert sum(p.numel() for p in model.parameters()) == plan["params"]
    if preset == "gpt2":
        assert plan["data"][0].startswith("hf:")
