"""LoRA: starts as the base, merges exactly, trains only the adapters, resumes exactly, and `peft` loads its adapter."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fromzero import checkpoint, lora
from fromzero.config import ConfigError, load_config
from fromzero.data.preference import PreferencePair
from fromzero.data.tasks import Task
from fromzero.lora import LoRAConfig, LoRALinear
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train import dpo, grpo, reward, sft
from fromzero.train.loop import read_metrics

SHAPE = ModelConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)


def random_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """B drawn at random, so the adapters change the model (at init B = 0 and they do nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.1)


def test_zero_b_starts_as_the_base_and_only_adapters_train():
    torch.manual_seed(0)
    base = Transformer(SHAPE).eval()
    ids = torch.randint(0, 300, (2, 16))
    expected = base(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_bf16 = base(ids)
    lora.inject(base, LoRAConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]), base="init")
    assert torch.equal(base(ids), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(base(ids), expected_bf16)
    assert sorted(lora.layers(base)) == sorted(
        f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    )
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # the base weight keeps its name: the state dict still reads as the plain model's plus the adapters
    assert "model.layers.0.self_attn.q_proj.weight" in base.state_dict()


def test_merge_equals_the_unmerged_forward():
    torch.manual_seed(0)
    # with q/k/v biases (an imported Qwen2): the frozen bias stays in the adapted and the merged layer
    model = lora.inject(
        Transformer(SHAPE.model_copy(update={"qkv_bias": True})).eval(), LoRAConfig(r=4, alpha=8), base="init"
    )
    random_adapters(model)
    ids = torch.randint(0, 300, (2, 16))
    adapted = model(ids)
    with lora.adapters_disabled(model):
        plain = model(ids)
    assert (adapted - plain).abs().max() > 1e-2  # the adapters do something
    merged = lora.merged_copy(model)
    assert not lora.is_lora(merged) and not lora.is_lora(merged.model.layers[0])
    torch.testing.assert_close(merged(ids), adapted, atol=1e-5, rtol=0)
    assert isinstance(model.model.layers[0].self_attn.q_proj, LoRALinear)  # the copy left the model as it was
    lora.merge(model)
    torch.testing.assert_close(model(ids), adapted, atol=1e-5, rtol=0)
    lora.unmerge(model)
    torch.testing.assert_close(model(ids), adapted, atol=1e-5, rtol=0)


def save_init(tmp_path):
    tok = Tokenizer.train(["count 1 2 3 4 5 6 7 8 9 10 and say the answer"] * 10, vocab_size=300)
    tok_file = tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = Transformer(SHAPE.model_copy(update={"vocab_size": tok.vocab_size}))
    return checkpoint.save(tmp_path / "init", 0, model, tokenizer_file=tok_file, meta={"stage": "init"})


CONVERSATIONS = [
    [{"role": "user", "content": f"count {i % 7}"}, {"role": "assistant", "content": f"{i % 7} {i % 7 + 1}"}]
    for i in range(24)
]


def sft_config(**overrides) -> sft.SFTConfig:
    base = dict(
        steps=4,
        micro_batch_size=4,
        seq_len=32,
        batch_tokens=128,
        lr=1e-2,
        warmup_steps=0,
        schedule="constant",
        precision="fp32",
        eval_every=2,
        checkpoint_every=2,
        val_fraction=0.1,
        lora=LoRAConfig(r=4, alpha=8, dropout=0.1),
    )
    return sft.SFTConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_sft")
    init = save_init(tmp)
    ckpt = sft.train(sft_config(), CONVERSATIONS, init, tmp / "sft", log=lambda _: None)
    return init, ckpt, tmp / "sft"


def test_sft_trains_only_the_adapters_and_saves_a_merged_checkpoint(sft_run):
    init, ckpt, out = sft_run
    start = load_file(str(init / "model.safetensors"))
    saved = load_file(str(ckpt / "model.safetensors"))
    assert sorted(saved) == sorted(start)  # a plain checkpoint: no adapter tensors in it
    adapters = torch.load(ckpt / "trainer_state.pt", weights_only=False)["lora"]
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert all(v.abs().max() > 0 for k, v in adapters.items() if ".lora_B." in k)  # B left zero: it trained
    # the base under the adapters is bit for bit the starting model: start + the trained update gives the checkpoint
    rebuilt = lora.inject(checkpoint.load_model(init), LoRAConfig(r=4, alpha=8, dropout=0.1), base=init)
    lora.load_trainable_state(rebuilt, adapters)
    merged = lora.merged_copy(rebuilt).state_dict()
    for name, value in saved.items():  # (the tied embedding is saved once, as safetensors does)
        assert torch.equal(merged[name], value), name
    for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(saved[name], start[name]), name
    assert not torch.equal(
        saved["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"]
    )
    # the next stage reads it as any checkpoint
    assert not lora.is_lora(checkpoint.load_model(out))


def test_resume_with_lora_is_exact(sft_run, tmp_path):
    init, _, full = sft_run
    cut = tmp_path / "cut"
    sft.train(
        sft_config(steps=2), CONVERSATIONS, init, cut, log=lambda _: None
    )  # constant lr: steps moves nothing else
    (cut / "DONE").unlink()
    sft.train(sft_config(), CONVERSATIONS, init, cut, resume=True, log=lambda _: None)

    def losses(stage):  # dropout draws from the global RNG: its state travels in the checkpoint too
        return [(m["step"], m.get("loss"), m.get("val_loss"), m.get("grad_norm")) for m in read_metrics(stage)]

    assert len(losses(full)) == 6 and losses(cut) == losses(full)
    (cut / "DONE").unlink()
    with pytest.raises(ValueError, match="trained with LoRA"):
        sft.train(sft_config(steps=5, lora=LoRAConfig()), CONVERSATIONS, init, cut, resume=True, log=lambda _: None)


def test_peft_loads_the_adapter_onto_the_base_with_the_same_logits(sft_run):
    peft = pytest.importorskip("peft")
    init, ckpt, out = sft_run
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    assert config["lora_alpha"] == 8 and config["base_model_name_or_path"] == str(init)
    keys = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys

    from transformers import AutoModelForCausalLM

    from fromzero.interop.hf import export

    start = checkpoint.load_model(init)
    base = AutoModelForCausalLM.from_pretrained(export(init, init.parent / "hf"))  # the starting model, exported
    tuned = peft.PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    ours = checkpoint.load_model(ckpt).eval()
    ids = torch.randint(0, ours.cfg.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tuned(input_ids=ids).logits, ours(ids), atol=1e-4, rtol=0)
        assert (tuned(input_ids=ids).logits - start(ids)).abs().max() > 1e-3  # and the adapter is not a no-op


PAIRS = [
    PreferencePair([{"role": "user", "content": f"count {i}"}], f"{i} {i + 1}", "say the answer") for i in range(16)
]


def test_reward_model_trains_its_heads_beside_the_adapters(tmp_path):
    init = save_init(tmp_path)
    cfg = reward.RewardConfig(
        steps=3,
        lr=1e-2,
        warmup_steps=0,
        micro_batch_size=8,
        batch_tokens=256,
        seq_len=32,
        precision="fp32",
        eval_every=3,
        checkpoint_every=3,
        lora=LoRAConfig(r=2),
    )
    ckpt = reward.train(cfg, PAIRS, PAIRS[:8], init, tmp_path / "rm", log=lambda _: None)
    trained = torch.load(ckpt / "trainer_state.pt", weights_only=False)["lora"]
    assert {"score.weight", "gate.weight", "gate.bias"} <= set(trained)
    assert trained["score.weight"].abs().max() > 0
    assert reward.load_reward_model(tmp_path / "rm").score.weight.abs().max() > 0  # merged and loadable as before
    config = json.loads((tmp_path / "rm" / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score", "gate"]
    assert "base_model.model.score.weight" in load_file(str(tmp_path / "rm" / "adapter" / "adapter_model.safetensors"))


def test_dpo_starts_at_ln2_with_adapters(tmp_path):
    init = save_init(tmp_path)
    cfg = dpo.DPOConfig(
        steps=2,
        lr=1e-2,
        warmup_steps=0,
        micro_batch_size=8,
        batch_tokens=256,
        seq_len=32,
        precision="fp32",
        eval_every=2,
        checkpoint_every=2,
        lora=LoRAConfig(r=2),
    )
    dpo.train(cfg, PAIRS, [], init, tmp_path / "dpo", log=lambda _: None)
    first, second = read_metrics(tmp_path / "dpo")
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and second["loss"] != first["loss"]


def digit_share(completion: str, task: Task) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def test_grpo_with_adapters_keeps_the_base_as_its_kl_reference(tmp_path):
    init = save_init(tmp_path)
    cfg = grpo.GRPOConfig(
        steps=2,
        prompts_per_step=2,
        num_generations=4,
        micro_batch_size=8,
        max_new_tokens=6,
        seq_len=32,
        lr=0.05,
        warmup_steps=0,
        precision="fp32",
        reward_funcs=[f"{__name__}:digit_share"],
        beta=0.1,
        num_iterations=2,
        eval_every=1000,
        checkpoint_every=1000,
        eval_problems=0,
        lora=LoRAConfig(r=2),
    )
    grpo.train(cfg, [Task(f"say {i}", str(i)) for i in range(4)], [], init, tmp_path / "grpo", log=lambda *_: None)
    first, second = read_metrics(tmp_path / "grpo")
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # the first step's adapters are zero: policy = base
    assert second["approx_kl"] > 0 and second["kl"] > 0  # the second update sees the adapted policy


def test_lora_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'ppo\.lora'.*'lora' is a key of sft, reward, dpo, grpo"):
        load_config("smoke", ["ppo.lora.r=8"])
    with pytest.raises(ConfigError, match=r"config key 'sft\.lora\.target_modules'.*unknown target module 'qkv_proj'"):
        load_config("smoke", ["sft.lora.target_modules=[q_proj,qkv_proj]"])
    assert load_config("smoke", ["grpo.lora.r=8"]).grpo.lora.r == 8
