"""HF transformers import and export, GGUF export: logits, generation, chat templates, files read back, bad inputs.

Every model here is made by the test, tiny and random (transformers' Llama, Qwen2 and Mistral classes at odd shapes;
a fromzero checkpoint of the project's own), so nothing is downloaded.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from typer.testing import CliRunner

from fromzero import checkpoint
from fromzero.cli import app
from fromzero.data.chat import render
from fromzero.generate import Engine, SamplingConfig
from fromzero.interop import gguf as gguf_export
from fromzero.interop import hf
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import SPLIT_PATTERN, Tokenizer
from fromzero.train.loop import read_metrics

transformers = pytest.importorskip("transformers")

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there, how are you today? I am fine, thanks!",
    "Mia lives in Oakridge and has a cat named Pip.",
    "Numbers: 12345, 678 and 9.",
] * 40
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "I am fine, thanks!"},
    {"role": "user", "content": "Where does Mia live?"},
    {"role": "assistant", "content": "In Oakridge."},
    {"role": "user", "content": "And the cat?"},
]
VOCAB = 2100  # embedding rows: more than the tokenizer's tokens, as in Qwen2

# each family's chat template shape, its special tokens and what its transformers config adds
CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
FAMILIES = {
    "qwen2": dict(
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        template=CHATML,
        tokens=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
        end="<|im_end|>",
        config=dict(tie_word_embeddings=True),
    ),
    "llama": dict(
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        template=LLAMA3,
        tokens=dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"),
        end="<|eot_id|>",
        config=dict(
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    "mistral": dict(
        specials=["<unk>", "<s>", "</s>"],
        template=MISTRAL,
        tokens=dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
        end="</s>",
        config=dict(
            tie_word_embeddings=False,
            head_dim=12,
            sliding_window=None,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
    ),
}


def byte_level_bpe(specials: list[str]) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        TEXT,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return tok


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that every layer moves the logits (the 0.02 init leaves them nearly uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.15 * noise)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """family -> a transformers model directory (3 layers, 6 heads, 2 KV heads, its tokenizer and chat template),
    made once per module."""
    made = {}

    def make(family: str):
        if family not in made:
            spec = FAMILIES[family]
            out = tmp_path_factory.mktemp(family) / "model"
            tok = transformers.PreTrainedTokenizerFast(
                tokenizer_object=byte_level_bpe(spec["specials"]), **spec["tokens"]
            )
            tok.chat_template = spec["template"]
            tok.save_pretrained(out)
            config_class = {
                "qwen2": transformers.Qwen2Config,
                "llama": transformers.LlamaConfig,
                "mistral": transformers.MistralConfig,
            }[family]
            config = config_class(
                vocab_size=VOCAB,
                hidden_size=48,
                intermediate_size=80,
                num_hidden_layers=3,
                num_attention_heads=6,
                num_key_value_heads=2,
                max_position_embeddings=96,
                rope_theta=5000.0,
                rms_norm_eps=1e-6,
                **spec["config"],
            )
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config)
            randomise(model, 1)
            model.save_pretrained(out)
            made[family] = out
        return made[family]

    return make


@pytest.fixture(params=list(FAMILIES))
def hf_dir(request, hf_model):
    return request.param, hf_model(request.param)


def chat_ids(tok, messages, prompt: bool) -> list[int]:
    """transformers' apply_chat_template ids (a list in 4.x, a BatchEncoding in 5.x)."""
    out = tok.apply_chat_template(messages, add_generation_prompt=prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def hf_logits(path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def random_ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(seed))


def test_import_gives_the_same_logits(hf_dir):
    family, path = hf_dir
    model = checkpoint.load_model(path).eval()
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.qkv_bias) == (3, 6, 2, family == "qwen2")
    assert cfg.tie_embeddings == (family == "qwen2") and (
        cfg.head_dim == 12 if family == "mistral" else cfg.head_size is None
    )
    assert (
        cfg.rope_scaling is None
        if family == "qwen2"
        else cfg.rope_scaling.type == {"llama": "llama3", "mistral": "linear"}[family]
    )
    ids = random_ids(VOCAB)
    with torch.no_grad():
        diff = (model(ids) - hf_logits(path, ids)).abs().max().item()
    assert diff <= 1e-4


def test_import_export_round_trip_gives_the_same_logits(hf_dir, tmp_path):
    family, path = hf_dir
    out = hf.export(f"hf:{path}", tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM" if family == "qwen2" else "LlamaForCausalLM"]
    ids = random_ids(VOCAB, 1)
    assert (hf_logits(out, ids) - hf_logits(path, ids)).abs().max().item() <= 1e-4
    assert chat_ids(transformers.AutoTokenizer.from_pretrained(out), CONVERSATION, True) == chat_ids(
        transformers.AutoTokenizer.from_pretrained(path), CONVERSATION, True
    )


def test_imported_chat_template_and_loss_mask(hf_dir):
    family, path = hf_dir
    tok = Tokenizer.load(checkpoint.tokenizer_file(path))
    reference = transformers.AutoTokenizer.from_pretrained(path)
    assert tok.end_id == reference.convert_tokens_to_ids(FAMILIES[family]["end"])
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:3]):
        for prompt in (True, False):
            ids, mask = render(tok, messages, generation_prompt=prompt)
            assert ids == chat_ids(reference, messages, prompt)
    ids, mask = render(tok, CONVERSATION[:5])
    learned, end = tok.decode([t for t, m in zip(ids, mask) if m]), FAMILIES[family]["end"]
    space = " " if family == "mistral" else ""  # its template puts the space before the answer
    assert learned == f"{space}I am fine, thanks!{end}{space}In Oakridge.{end}"
    # a special token's text typed by a user stays text, as in the built-in template
    forged = render(tok, [{"role": "user", "content": f"hi{end}"}])[0]
    assert forged.count(tok.end_id) == render(tok, [{"role": "user", "content": "hi"}])[0].count(tok.end_id)


def save_fromzero_checkpoint(root, tied: bool):
    """A tiny fromzero checkpoint made with the project's own functions: its tokenizer and a random model."""
    tok = Tokenizer.train(TEXT, vocab_size=400)
    tok_file = tok.save(root / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        dim=48,
        n_layers=3,
        n_heads=6,
        n_kv_heads=2,
        hidden_dim=80,
        max_seq_len=96,
        rope_theta=5000.0,
        tie_embeddings=tied,
    )
    model = Transformer(cfg)
    randomise(model, 2)
    return checkpoint.save(root / "sft", 5, model, tokenizer_file=tok_file, meta={"stage": "sft"})


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def fromzero_ckpt(request, tmp_path_factory):
    return save_fromzero_checkpoint(tmp_path_factory.mktemp("fromzero"), request.param)


def test_export_fromzero_to_transformers(fromzero_ckpt, tmp_path):
    out = hf.export(fromzero_ckpt, tmp_path / "hf")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    model, tok = checkpoint.load_model(fromzero_ckpt).eval(), Tokenizer.load(checkpoint.tokenizer_file(fromzero_ckpt))
    reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    reference_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = random_ids(tok.vocab_size, 2)
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() <= 1e-4
    # the chat template: the same ids, multi-turn with a system prompt, and special tokens
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[:5]):
        prompt = messages[-1]["role"] == "user"
        assert chat_ids(reference_tok, messages, prompt) == render(tok, messages, generation_prompt=prompt)[0]
    assert (reference_tok.bos_token, reference_tok.eos_token, reference_tok.pad_token) == (
        "<|bos|>",
        "<|end|>",
        "<|pad|>",
    )
    assert reference.generation_config.eos_token_id == tok.end_id
    # greedy generation: token for token what fromzero's engine writes
    prompt = render(tok, CONVERSATION, generation_prompt=True)[0]
    ours = Engine(model, tok).generate([prompt], SamplingConfig(max_new_tokens=20, temperature=0))[0].tokens
    theirs = reference.generate(
        torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_id
    )[0, len(prompt) :].tolist()
    assert ours == theirs


def gguf_fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def test_gguf_export_reads_back(fromzero_ckpt, tmp_path):
    gguf = pytest.importorskip("gguf")
    out = gguf_export.export(fromzero_ckpt, tmp_path / "model.gguf", "f32")
    model, tok_file = checkpoint.load_model(fromzero_ckpt), checkpoint.tokenizer_file(fromzero_ckpt)
    cfg, tokenizer_json = model.cfg, json.loads(tok_file.read_text())
    reader = gguf.GGUFReader(out)
    fields = gguf_fields(reader)
    assert fields["general.architecture"] == "llama"
    assert (
        fields["llama.block_count"],
        fields["llama.embedding_length"],
        fields["llama.attention.head_count"],
        fields["llama.attention.head_count_kv"],
        fields["llama.feed_forward_length"],
        fields["llama.context_length"],
    ) == (3, 48, 6, 2, 80, 96)
    assert fields["llama.rope.freq_base"] == pytest.approx(5000.0)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "llama-bpe"
    vocab = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    assert fields["tokenizer.ggml.tokens"] == [vocab[i] for i in range(cfg.vocab_size)]
    assert fields["tokenizer.ggml.merges"] == [
        m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]
    ]
    assert fields["tokenizer.ggml.token_type"][:7] == [3, 3, 3, 3, 3, 3, 1]  # the six specials are control tokens
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (0, 5)
    assert fields["tokenizer.chat_template"] == hf.BUILTIN_CHAT_TEMPLATE
    state = model.state_dict()
    expected = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    if not cfg.tie_embeddings:
        expected["output.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        layer = lambda name: state[f"model.layers.{i}.{name}"]  # noqa: E731
        expected.update(
            {
                f"blk.{i}.attn_q.weight": gguf_export.permute(layer("self_attn.q_proj.weight"), 6),
                f"blk.{i}.attn_k.weight": gguf_export.permute(layer("self_attn.k_proj.weight"), 2),
                f"blk.{i}.attn_v.weight": layer("self_attn.v_proj.weight"),
                f"blk.{i}.attn_output.weight": layer("self_attn.o_proj.weight"),
                f"blk.{i}.attn_norm.weight": layer("input_layernorm.weight"),
                f"blk.{i}.ffn_norm.weight": layer("post_attention_layernorm.weight"),
                f"blk.{i}.ffn_gate.weight": layer("mlp.gate_proj.weight"),
                f"blk.{i}.ffn_up.weight": layer("mlp.up_proj.weight"),
                f"blk.{i}.ffn_down.weight": layer("mlp.down_proj.weight"),
            }
        )
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(expected)
    for name, want in expected.items():
        assert list(tensors[name].shape) == list(reversed(want.shape))  # ggml lists dimensions innermost first
        np.testing.assert_array_equal(np.asarray(tensors[name].data).reshape(want.shape), want.numpy())
    # llama.cpp's interleaved rotary pairs: row 2j of a permuted head is HF's row j, row 2j+1 its row j + head_dim/2
    q = state["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data[1], q[cfg.head_dim // 2].numpy())


def test_gguf_of_an_imported_model(hf_model, tmp_path):
    """Qwen2: q/k/v biases, a tied head and more embedding rows than tokens."""
    gguf = pytest.importorskip("gguf")
    path = hf_model("qwen2")
    out = gguf_export.export(f"hf:{path}", tmp_path / "qwen.gguf", "f16")
    reader = gguf.GGUFReader(out)
    fields, tensors = gguf_fields(reader), {t.name: t for t in reader.tensors}
    assert fields["general.architecture"] == "qwen2" and fields["tokenizer.ggml.pre"] == "llama-bpe"
    assert "blk.0.attn_q.bias" in tensors and "output.weight" not in tensors
    assert (
        tensors["blk.0.attn_q.weight"].data.dtype == np.float16
        and tensors["blk.0.attn_norm.weight"].data.dtype == np.float32
    )
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB and tokens[-1] == f"[PAD{VOCAB - 1}]"
    assert fields["tokenizer.chat_template"] == CHATML
    q = checkpoint.load_model(path).state_dict()["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_allclose(
        tensors["blk.0.attn_q.weight"].data.astype(np.float32), q.numpy(), atol=1e-3
    )  # qwen2: no permute


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_inputs_are_one_line_errors(hf_model, tmp_path):
    path, fromzero_ckpt = hf_model("llama"), save_fromzero_checkpoint(tmp_path, tied=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    one_line_error(invoke("export", "--ckpt", f"hf:{tmp_path / 'notes'}", "--out", tmp_path / "x"), "no config.json")
    one_line_error(invoke("sft", "--init", tmp_path / "notes", "--out", tmp_path / "s"), "no checkpoint at")
    gpt2 = shutil.copytree(path, tmp_path / "gpt2")
    (gpt2 / "config.json").write_text(
        json.dumps({**json.loads((path / "config.json").read_text()), "model_type": "gpt2"})
    )
    one_line_error(invoke("sft", "--init", gpt2, "--out", tmp_path / "s"), "model_type 'gpt2' is not supported")
    yarn = shutil.copytree(path, tmp_path / "yarn")
    config = json.loads((path / "config.json").read_text())
    config.pop("rope_parameters", None)
    (yarn / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
    one_line_error(
        invoke("dpo", "--init", f"hf:{yarn}", "--out", tmp_path / "d"), "rope_scaling type 'yarn' is not supported"
    )
    one_line_error(
        invoke("export", "--ckpt", fromzero_ckpt, "--out", tmp_path / "m.bin", "--format", "gguf"), "NAME.gguf"
    )
    one_line_error(invoke("export", "--ckpt", fromzero_ckpt, "--out", path), "exists")
    from fromzero.train.reward import RewardModel

    reward = RewardModel.from_lm(checkpoint.load_model(fromzero_ckpt))
    rm = checkpoint.save(
        tmp_path / "rm", 1, reward, tokenizer_file=checkpoint.tokenizer_file(fromzero_ckpt), meta={"stage": "reward"}
    )
    one_line_error(invoke("export", "--ckpt", rm, "--out", tmp_path / "rm-hf"), "is a reward model")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


SMOKE = [
    "--preset",
    "smoke",
    "--set",
    "sft.steps=3",
    "--set",
    "sft.micro_batch_size=4",
    "--set",
    "sft.batch_tokens=384",
    "--set",
    "sft.seq_len=96",
    "--set",
    "sft.eval_every=3",
    "--set",
    "sft.checkpoint_every=3",
    "--set",
    "dpo.steps=2",
    "--set",
    "dpo.micro_batch_size=4",
    "--set",
    "dpo.batch_tokens=384",
    "--set",
    "dpo.seq_len=96",
    "--set",
    "dpo.eval_every=2",
    "--set",
    "dpo.checkpoint_every=2",
    "--set",
    "preference.sampled_questions=0",
]


def test_stages_run_on_an_imported_model(hf_model, tmp_path):
    """SFT from an imported Qwen2 model, DPO from that SFT checkpoint: the tokenizer and template travel along."""
    path = hf_model("qwen2")
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
        }
        for i in range(24)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", chats)
    result = invoke("sft", "--init", f"hf:{path}", "--out", tmp_path / "sft", "--data", data, *SMOKE)
    assert result.exit_code == 0, result.output
    sft = checkpoint.resolve(tmp_path / "sft")
    assert (sft / "tokenizer_config.json").is_file() and (sft / "chat_template.jinja").is_file()
    assert checkpoint.load_model(sft).cfg.qkv_bias
    pairs = [
        {"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea."} for i in range(24)
    ]
    result = invoke(
        "dpo",
        "--init",
        tmp_path / "sft",
        "--out",
        tmp_path / "dpo",
        "--data",
        write_jsonl(tmp_path / "p.jsonl", pairs),
        *SMOKE,
    )
    assert result.exit_code == 0, result.output
    out = hf.export(tmp_path / "dpo", tmp_path / "hf")
    tok = Tokenizer.load(checkpoint.tokenizer_file(tmp_path / "dpo"))
    ids = render(tok, CONVERSATION, generation_prompt=True)[0]
    assert chat_ids(transformers.AutoTokenizer.from_pretrained(out), CONVERSATION, True) == ids


def test_reward_gate_finds_the_answer_in_an_imported_template(hf_dir):
    """The likelihood gate's answer tokens start where the loss mask starts the last assistant turn."""
    from fromzero.data.chat import template_ids
    from fromzero.train.reward import ASSISTANT_ID, answer_marker, marker_ends

    family, path = hf_dir
    tok = Tokenizer.load(checkpoint.tokenizer_file(path))
    marker = answer_marker(tok)
    assert len(marker) > 1 and tok.decode(marker).endswith(
        {"qwen2": "assistant\n", "llama": "<|end_header_id|>\n\n", "mistral": "[/INST]"}[family]
    )
    for messages in (
        CONVERSATION[:5],
        CONVERSATION[1:3],
        [{"role": "user", "content": "Hi [/INST] <|im_start|>"}, {"role": "assistant", "content": "Yes"}],
    ):
        ids = render(tok, messages)[0]
        answer = (marker_ends(torch.tensor([ids]), marker).flip(1).cumsum(1).flip(1) == 0)[0]
        assert answer.int().argmax().item() == len(template_ids(tok, messages[:-1], True))
    assert answer_marker(Tokenizer.train(TEXT, vocab_size=300)) == (ASSISTANT_ID,)


PAIRS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea."} for i in range(24)]
RL = [
    "--preset",
    "smoke",
    "--set",
    "preference.sampled_questions=0",
    "--set",
    "reward.steps=2",
    "--set",
    "reward.micro_batch_size=4",
    "--set",
    "reward.batch_tokens=384",
    "--set",
    "reward.seq_len=96",
    "--set",
    "reward.eval_every=2",
    "--set",
    "reward.checkpoint_every=2",
    "--set",
    "ppo.steps=2",
    "--set",
    "ppo.prompts_per_rollout=4",
    "--set",
    "ppo.num_minibatches=1",
    "--set",
    "ppo.ppo_epochs=2",
    "--set",
    "ppo.micro_batch_size=4",
    "--set",
    "ppo.max_new_tokens=8",
    "--set",
    "ppo.seq_len=64",
    "--set",
    "ppo.eval_every=2",
    "--set",
    "ppo.checkpoint_every=2",
    "--set",
    "grpo.steps=2",
    "--set",
    "grpo.prompts_per_step=2",
    "--set",
    "grpo.num_generations=2",
    "--set",
    "grpo.micro_batch_size=4",
    "--set",
    "grpo.max_new_tokens=8",
    "--set",
    "grpo.seq_len=64",
    "--set",
    "grpo.eval_every=2",
    "--set",
    "grpo.checkpoint_every=2",
    "--set",
    "grpo.eval_problems=0",
    "--set",
    "eval.pass_k=1",
]


def test_reward_ppo_and_grpo_run_on_an_imported_model(hf_model, tmp_path):
    """A reward model (with the likelihood gate) and PPO from an imported Qwen2 model, GRPO from an imported Llama
    one: each runs, the reward model loads with the template's answer marker, the policies export."""
    from fromzero.train.reward import answer_marker, load_reward_model

    qwen, llama = hf_model("qwen2"), hf_model("llama")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = invoke("reward", "--init", f"hf:{qwen}", "--out", tmp_path / "rm", "--data", pairs, *RL)
    assert result.exit_code == 0, result.output
    rm = load_reward_model(tmp_path / "rm")
    tok = Tokenizer.load(checkpoint.tokenizer_file(tmp_path / "rm"))
    assert rm.gate is not None and rm.answer_marker == answer_marker(tok) and rm.cfg.qkv_bias
    result = invoke(
        "ppo",
        "--init",
        f"hf:{qwen}",
        "--reward-model",
        tmp_path / "rm",
        "--out",
        tmp_path / "ppo",
        "--data",
        pairs,
        *RL,
    )
    assert result.exit_code == 0, result.output
    out = hf.export(tmp_path / "ppo", tmp_path / "ppo-hf")
    assert (
        chat_ids(transformers.AutoTokenizer.from_pretrained(out), CONVERSATION, True)
        == render(tok, CONVERSATION, generation_prompt=True)[0]
    )
    ids = random_ids(VOCAB, 3)
    with torch.no_grad():
        ours = checkpoint.load_model(tmp_path / "ppo").eval()(ids)
    assert (ours - hf_logits(out, ids)).abs().max().item() <= 1e-4

    tasks = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(24)]
    result = invoke(
        "grpo",
        "--init",
        f"hf:{llama}",
        "--out",
        tmp_path / "grpo",
        "--data",
        write_jsonl(tmp_path / "tasks.jsonl", tasks),
        *RL,
    )
    assert result.exit_code == 0, result.output
    assert '"before"' in result.output  # pass@1 of the imported model and of the tuned one on the held-out tasks
    grpo = checkpoint.resolve(tmp_path / "grpo")
    assert (grpo / "tokenizer_config.json").is_file() and checkpoint.load_model(grpo).cfg.rope_scaling.type == "llama3"
    out = hf.export(grpo, tmp_path / "grpo-hf")
    assert (hf_logits(out, ids) - checkpoint.load_model(grpo).eval()(ids).detach()).abs().max().item() <= 1e-4
    for stage in ("rm", "ppo", "grpo"):
        assert [m["step"] for m in read_metrics(tmp_path / stage) if "loss" in m] == [1, 2], stage


def test_text_only_sampling_bans_the_imported_tokenizers_specials(hf_model):
    """Stage 0's samples of an imported model: its own special tokens and the embedding rows past its vocabulary are
    never sampled, and ids 0-5 (ordinary text here but for the first) are."""
    from fromzero.eval.samples import complete, non_text_ids

    path = hf_model("llama")
    model, tok = checkpoint.load_model(path).eval(), Tokenizer.load(checkpoint.tokenizer_file(path))
    banned = set(non_text_ids(tok, VOCAB))
    assert banned >= (tok.special_ids - {tok.bos_id}) | set(range(tok.vocab_size, VOCAB)) and tok.bos_id not in banned
    assert not banned & set(range(len(FAMILIES["llama"]["specials"]), 8))
    # rig the head so that some non-text id always wins: a pair of opposite rows wins whatever the hidden state
    rigged = sorted(tok.special_ids - {tok.bos_id}) + [tok.vocab_size, VOCAB - 1]
    with torch.no_grad():
        for k, row in enumerate(rigged):
            model.lm_head.weight[row] = 0
            model.lm_head.weight[row, k // 2] = 1000.0 * (-1) ** k
    free = complete(model, tok, ["The quick brown"], max_new_tokens=6)[0]
    text = complete(model, tok, ["The quick brown"], max_new_tokens=6, text_only=True)[0]
    assert any(s in free for s in tok.special_strings) or len(free) < len(text)
    assert text and not any(s in text for s in tok.special_strings)


def test_sharded_checkpoint_imports_and_serves(hf_model, tmp_path):
    """save_pretrained with a small max_shard_size: the index and its shards import, export and are hashed for serve."""
    import hashlib

    from fromzero.serve.models import find_checkpoints, weights_sha

    path, sharded = hf_model("qwen2"), tmp_path / "sharded"
    transformers.AutoModelForCausalLM.from_pretrained(path).save_pretrained(sharded, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(path / name, sharded / name)
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    ids = random_ids(VOCAB, 4)
    with torch.no_grad():
        assert (checkpoint.load_model(f"hf:{sharded}").eval()(ids) - hf_logits(path, ids)).abs().max().item() <= 1e-4
    assert (hf_logits(hf.export(sharded, tmp_path / "out"), ids) - hf_logits(path, ids)).abs().max().item() <= 1e-4
    assert find_checkpoints([sharded]) == [("sharded", sharded)]
    assert weights_sha(sharded) == hashlib.sha256(b"".join(s.read_bytes() for s in shards)).hexdigest()[:16]
    shards[-1].unlink()
    one_line_error(invoke("export", "--ckpt", f"hf:{sharded}", "--out", tmp_path / "x"), shards[-1].name, "not in")
