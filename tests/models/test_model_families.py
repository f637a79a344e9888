"""Today's bases in the one model: Llama 3.x (rope_type llama3), Qwen2/2.5 (q/k/v bias, tied embeddings) and
Mistral (sliding window), each a tiny random model built by transformers from the family's own config class
and saved with save_pretrained (sharded, with the index file), checked as LLaMA-2 is (test_model_parity):
logits after import and after export against transformers (1e-4, fp32: the two differ in float32 summation
order only), greedy tokens through the engine against HF generate, one training step against PyTorch (full,
and LoRA through a PEFT adapter that peft loads; support.check_step's tolerances), a GGUF written by the
`gguf` package.
Plus the presets' shapes against the published configs of their hub names."""

import json
import math

import flax.linen as nn
import gguf
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

import xlit_jax
from configs.experiments import paper
from configs.studies import bases
from xlit_jax.data.records import Turn
from xlit_jax.data.templates import encode, end_of_turn_id, get_template, prompt_text
from xlit_jax.errors import WeightsError
from xlit_jax.io.checkpoints.model_info import read_config, save_model_info
from xlit_jax.io.gguf import GGUFFile
from xlit_jax.io.hf import GENERATION_CONFIG, config_from_hf, save_hf_dir, tensors_from_params
from xlit_jax.loader import load_config
from xlit_jax.models.llama import init_boxed
from xlit_jax.models.presets import HUB_NAMES, PRESETS, get_preset
from xlit_jax.study import grid
from xlit_jax.train.loop import train

from support import full_ft_parity, hf_generate, left_padded, lora_parity, tiny_config

SHAPES = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.05, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
FAMILIES = {
    # Llama 3.1's rope scaling; original context 64 puts the 8 frequencies of a 16-wide head in all three
    # bands (kept, interpolated, divided by the factor)
    "llama3": lambda: transformers.LlamaConfig(**SHAPES, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "qwen2": lambda: transformers.Qwen2Config(**SHAPES, rope_theta=1000000.0, tie_word_embeddings=True,
                                              rms_norm_eps=1e-6),
    "mistral": lambda: transformers.MistralConfig(**SHAPES, sliding_window=128),
}
FAMILY_OF = {"llama3": "llama", "qwen2": "qwen2", "mistral": "mistral"}


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def max_diff_on_tokens(ours, theirs, mask):
    return max(np.abs(ours[i][mask[i] == 1] - theirs[i][mask[i] == 1]).max() for i in range(len(mask)))


def sequences(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, SHAPES["vocab_size"], n).tolist() for n in lengths]


# Mistral (LLaMA's layers with a window no test sequence reaches) in the slow set, to keep make test short
@pytest.fixture(scope="module", params=["llama3", "qwen2", pytest.param("mistral", marks=pytest.mark.slow)])
def family(request, tmp_path_factory):
    """(name, the HF model, its save_pretrained directory): random weights, the biases and norms too (HF
    starts them at 0 and 1, which would hide a bias or a norm read wrongly)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(FAMILIES[request.param](), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    directory = tmp_path_factory.mktemp(request.param) / "hf"
    model.save_pretrained(directory, max_shard_size="100KB")
    return request.param, model, directory


def test_sharded_directory_imports_with_transformers_logits(family):
    name, reference, directory = family
    assert (directory / "model.safetensors.index.json").is_file()
    model = xlit_jax.load(directory)
    assert model.config.family == FAMILY_OF[name]
    ids, mask = left_padded(sequences([17, 9, 1, 17]))
    assert max_diff_on_tokens(model.logits(ids, mask), hf_logits(reference, ids, mask), mask) <= 1e-4


def test_export_loads_in_transformers_with_the_same_logits_and_reimports_bitwise(family, tmp_path):
    name, _, directory = family
    model = xlit_jax.load(directory)
    save_hf_dir(model.config, model.params, tmp_path / "out")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(exported).__name__.lower().startswith(FAMILY_OF[name])
    ids, mask = left_padded(sequences([12, 5], seed=1))
    assert max_diff_on_tokens(model.logits(ids, mask), hf_logits(exported, ids, mask), mask) <= 1e-4
    again = xlit_jax.load(tmp_path / "out")
    assert again.config == model.config
    for (key, ours), (_, theirs) in zip(tensors_from_params(model.config, model.params),
                                        tensors_from_params(again.config, again.params)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=key)


def test_greedy_tokens_through_the_engine_match_hf_generate(family):
    _, reference, directory = family
    model = xlit_jax.load(directory)
    prompts = sequences([11, 4, 23, 7], seed=2)
    ours = model.generate_ids(prompts, 64, repetition_penalty=1.1, slots=4)
    assert ours == hf_generate(reference, prompts)
    assert max(map(len, ours)) > 5


@pytest.mark.slow  # ~40 s for both families: CI runs it; make test keeps LLaMA's (test_train_torch_parity.py)
def test_one_training_step_matches_pytorch_full_and_lora_through_peft(family, tmp_path):
    _, _, directory = family
    model = xlit_jax.load(directory)
    full_ft_parity(model.config, model.params, tmp_path / "full", lr=1e-3, update_tol=1e-3)
    lora_parity(model.config, model.params, tmp_path / "lora", lr=1e-3, update_tol=1e-3)


def test_mistral_past_its_sliding_window_matches_transformers(tmp_path):
    """Sequences of 24 tokens over a window of 8 (left-padded), against transformers' Mistral with eager
    attention (its mask: masking_utils' sliding-window causal mask): logits within the family tolerance, and
    greedy decoding through the slot engine 64 tokens past the window equals HF generate."""
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.MistralConfig(**SHAPES, sliding_window=8), dtype=torch.float32, attn_implementation="eager")
    reference.eval()
    reference.save_pretrained(tmp_path / "hf")
    model = xlit_jax.load(tmp_path / "hf")
    assert (model.config.sliding_window, model.config.max_positions) == (8, SHAPES["max_position_embeddings"])
    ids, mask = left_padded(sequences([24, 17, 9]))
    theirs = hf_logits(reference, ids, mask)
    assert max_diff_on_tokens(model.logits(ids, mask), theirs, mask) <= 1e-4
    unwindowed = xlit_jax.Model(model.config.replace(sliding_window=None), model.params, None, "no window")
    assert max_diff_on_tokens(unwindowed.logits(ids, mask), theirs, mask) > 1e-2  # the window is what matches
    prompts = sequences([11, 4, 23, 7], seed=2)
    ours = model.generate_ids(prompts, 64, repetition_penalty=1.1, slots=4)
    assert ours == hf_generate(reference, prompts)
    assert max(map(len, ours)) > 8


def test_what_is_not_implemented_is_refused_in_one_line_naming_the_field():
    hf = FAMILIES["llama3"]().to_dict()
    with pytest.raises(WeightsError, match="attention_bias"):  # LLaMA's bias is on o too: not Qwen2's
        config_from_hf({**hf, "attention_bias": True})
    with pytest.raises(WeightsError, match="rope scaling type 'yarn'"):
        config_from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(WeightsError, match="'low_freq_factor'"):
        config_from_hf({**hf, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}})
    qwen2 = dict(SHAPES, use_sliding_window=True, sliding_window=8)
    with pytest.raises(WeightsError, match="sliding window on some layers only"):  # layer 1 slides, layer 0 not
        config_from_hf(transformers.Qwen2Config(**qwen2, max_window_layers=1).to_dict())
    assert config_from_hf(transformers.Qwen2Config(**qwen2, max_window_layers=0).to_dict()).sliding_window == 8
    assert config_from_hf(transformers.Qwen2Config(**dict(qwen2, use_sliding_window=False)).to_dict()).sliding_window \
        is None


# ---- GGUF: written by the `gguf` package with llama.cpp's tensor names -----------------------------------

def llama_cpp_rows(w, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's two rotary halves interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_rope_divisors(config):
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors for rope_type llama3: per frequency, 1 (short
    wavelengths), the factor (long ones) or 1 / ((1 - smooth) / factor + smooth), in Python floats."""
    factor, low, high, original = (config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor,
                                   config.rope_original_max_positions)
    out = []
    for i in range(0, config.head_dim, 2):
        wavelength = 2 * math.pi * config.rope_theta ** (i / config.head_dim)
        smooth = (original / wavelength - low) / (high - low)
        out.append(1.0 if wavelength < original / high else factor if wavelength > original / low else
                   1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def write_gguf(path, config, params, arch):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")  # a byte-level BPE: one token per byte, one merge, then extras
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["ab"]
    tokens += [f"<extra_{i}>" for i in range(config.vocab_size - len(tokens))]
    writer.add_token_list(tokens)
    writer.add_token_merges(["a b"])
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_ids[0])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                   "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, value in tensors_from_params(config, params):
        value = np.ascontiguousarray(value, np.float32)
        if name.startswith("model.layers."):
            layer, module, kind = name[len("model.layers."):].split(".", 1)[0], *name.split(".", 3)[3].rsplit(".", 1)
            if arch == "llama" and kind == "weight" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                value = llama_cpp_rows(value, config.num_heads if module.endswith("q_proj") else config.num_kv_heads)
            name = f"blk.{layer}.{layer_names[module]}.{kind}"
        else:
            name = names[name]
        writer.add_tensor(name, value)
    if config.rope_type == "llama3":
        writer.add_tensor("rope_freqs.weight", llama_cpp_rope_divisors(config))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("name, arch", [("qwen2", "qwen2"), ("mistral", "llama"), ("llama3", "llama")])
def test_gguf_written_by_the_gguf_package_loads_with_the_same_logits(name, arch, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(FAMILIES[name](), dtype=torch.float32)
    with torch.no_grad():
        for key, p in hf.named_parameters():
            if key.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    model = xlit_jax.load(tmp_path / "hf")
    write_gguf(tmp_path / "m.gguf", model.config, model.params, arch)
    loaded = xlit_jax.load(tmp_path / "m.gguf")
    assert loaded.config.qkv_bias == (arch == "qwen2")
    assert loaded.config.tie_embeddings == model.config.tie_embeddings
    rope = ("rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions")
    assert [getattr(loaded.config, f) for f in rope] == [getattr(model.config, f) for f in rope]
    ids, mask = left_padded(sequences([10, 4]))
    np.testing.assert_allclose(loaded.logits(ids, mask), model.logits(ids, mask), atol=1e-5)
    assert max_diff_on_tokens(loaded.logits(ids, mask), hf_logits(hf.eval(), ids, mask), mask) <= 1e-4
    assert loaded.tokenizer.decode(loaded.tokenizer("Olá").input_ids) == "Olá"


def test_gguf_rope_freqs_other_than_llama3_scaling_are_refused_by_name(tmp_path):
    """A Llama 3 GGUF's divisors at another position, or of another length, are no llama3 scaling we can
    write as a config: refused, naming the tensor."""
    config = PRESETS["tiny"].replace(rope_type="llama3", rope_factor=8.0, rope_original_max_positions=64)
    params = xlit_jax.load("preset:tiny").params
    for divisors in (llama_cpp_rope_divisors(config)[::-1], llama_cpp_rope_divisors(config)[:4]):
        writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
        writer.add_block_count(config.num_layers)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_heads)
        writer.add_tensor("token_embd.weight", np.asarray(params["embed"]))
        writer.add_tensor("rope_freqs.weight", np.ascontiguousarray(divisors))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(WeightsError, match="rope_freqs.weight.*is not Llama 3's rope scaling"):
            GGUFFile(tmp_path / "m.gguf").config()


# ---- presets against the published configs --------------------------------------------------------------

# Each hub name's config.json as published on huggingface.co (the model card's "Files" tab):
# vocab, hidden, intermediate, layers, heads, kv heads, rope_theta, tied embeddings, max positions,
# rope scaling (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings), sliding window.
PUBLISHED = {
    # meta-llama/Llama-3.1-8B config.json
    "llama3.1-8b": (128256, 4096, 14336, 32, 32, 8, 500000.0, False, 131072, (8.0, 1.0, 4.0, 8192), None),
    # meta-llama/Llama-3.2-1B config.json (head_dim 64)
    "llama3.2-1b": (128256, 2048, 8192, 16, 32, 8, 500000.0, True, 131072, (32.0, 1.0, 4.0, 8192), None),
    # meta-llama/Llama-3.2-3B config.json (head_dim 128)
    "llama3.2-3b": (128256, 3072, 8192, 28, 24, 8, 500000.0, True, 131072, (32.0, 1.0, 4.0, 8192), None),
    # Qwen/Qwen2.5-0.5B config.json (use_sliding_window false)
    "qwen2.5-0.5b": (151936, 896, 4864, 24, 14, 2, 1000000.0, True, 32768, None, None),
    # Qwen/Qwen2.5-7B config.json (use_sliding_window false)
    "qwen2.5-7b": (152064, 3584, 18944, 28, 28, 4, 1000000.0, False, 131072, None, None),
    # mistralai/Mistral-7B-v0.1 config.json
    "mistral-7b": (32000, 4096, 14336, 32, 32, 8, 10000.0, False, 32768, None, 4096),
}
HEAD_DIMS = {"llama3.2-3b": 128, "llama3.2-1b": 64, "qwen2.5-0.5b": 64, "qwen2.5-7b": 128}
PUBLISHED_HUB_NAMES = {"llama3.1-8b": "meta-llama/Llama-3.1-8B", "llama3.2-1b": "meta-llama/Llama-3.2-1B",
                       "llama3.2-3b": "meta-llama/Llama-3.2-3B", "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
                       "qwen2.5-7b": "Qwen/Qwen2.5-7B", "mistral-7b": "mistralai/Mistral-7B-v0.1"}


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_preset_shapes_match_the_published_config_of_the_hub_name(preset):
    vocab, hidden, mlp, layers, heads, kv, theta, tied, positions, rope, window = PUBLISHED[preset]
    c = PRESETS[preset]
    assert HUB_NAMES[preset] == PUBLISHED_HUB_NAMES[preset]
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads) == \
        (vocab, hidden, mlp, layers, heads, kv)
    assert (c.rope_theta, c.tie_embeddings, c.max_position_embeddings, c.sliding_window) == (theta, tied, positions,
                                                                                           window)
    assert c.head_dim == HEAD_DIMS.get(preset, hidden // heads)
    assert c.qkv_bias == preset.startswith("qwen")
    if rope is None:
        assert c.rope_type == "default"
    else:
        assert c.rope_type == "llama3"
        assert (c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor, c.rope_original_max_positions) == rope


# ---- chat templates: each family's own, from a tokenizer built offline -----------------------------------

# Qwen/Qwen2.5-7B-Instruct's tokenizer_config.json chat_template, its tool-call branches left out
QWEN2_5_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>'"
    " + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# meta-llama/Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# (template, special tokens, bos, eos as the base model's tokenizer has it, what closes an answer)
TEMPLATES = {
    "qwen2.5": (QWEN2_5_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>",
                "<|im_end|>"),
    "llama3": (LLAMA3_TEMPLATE, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                 "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
}


def byte_level_tokenizer(template, specials, bos, eos):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(alphabet)}, [], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos,
                                                chat_template=template)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_familys_chat_template_gives_answer_only_targets_closed_by_its_end_of_turn(name):
    template_text, specials, bos, eos, end = TEMPLATES[name]
    tok = byte_level_tokenizer(template_text, specials, bos, eos)
    conversation = (Turn("user", "Hi there"), Turn("assistant", "Hello!"), Turn("user", "Capital of Peru?"),
                    Turn("assistant", "Lima."))
    template = get_template("chat", tok)
    assert [p.text for p in template.pieces(conversation) if p.target] == [f"Hello!{end}", f"Lima.{end}"]
    ((ids, target),) = encode(template, tok, [conversation])
    assert tok.decode(ids[target]) == f"Hello!{end}Lima.{end}"
    for turns in (2, 4):  # a generation prompt tokenizes to the start of the training sequence
        prompt = tok(prompt_text(template, conversation[:turns - 1]), add_special_tokens=False).input_ids
        assert list(ids[:len(prompt)]) == prompt and target[len(prompt)] and not target[len(prompt) - 1]
    assert tok.convert_ids_to_tokens(end_of_turn_id(template, tok)) == end


@pytest.mark.slow  # ~12 s of training: CI runs it; make test keeps each template's end-of-turn and mask tests
def test_a_run_tuned_with_qwen2_5s_template_stops_its_answers_at_im_end(tmp_path):
    """The base's EOS is <|endoftext|>, the template closes turns with <|im_end|>: the tuned model learns to end
    answers with the latter, so the run saves it among the EOS ids, and decoding from the workdir and from the
    HF export (transformers' generate) stops there, not at the token budget."""
    template_text, specials, bos, eos, end = TEMPLATES["qwen2.5"]
    tok = byte_level_tokenizer(template_text, specials, bos, eos)
    tok.save_pretrained(tmp_path / "tokenizer")
    data = tmp_path / "chats.en.jsonl"
    words = "the a cat dog sat ran on mat".split()
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": " ".join(words[i % 8:i % 8 + 3])},
                                                     {"role": "assistant", "content": "ok"}]}) + "\n"
                            for i in range(40)))
    workdir = tmp_path / "run"
    train(tiny_config(data, **{"model.vocab_size": 320, "data.tokenizer": str(tmp_path / "tokenizer"),
                               "data.template": "chat", "data.seq_len": 256, "data.tokens_per_batch": 512,
                               "optim.lr": 3e-3, "optim.min_lr": 1e-3, "train.max_steps": 30, "train.save_every": 30,
                               "train.export_hf": True}), str(workdir))
    end_id = tok.convert_tokens_to_ids(end)
    assert read_config(workdir).eos_token_ids == (2, end_id)  # the preset's, then the template's end of turn
    prompt = tok(prompt_text(get_template("chat", tok), [Turn("user", "a dog ran")]), add_special_tokens=False)
    ours = xlit_jax.load(workdir).generate_ids([prompt.input_ids], 64, repetition_penalty=1.1)
    assert tok.decode(ours[0]) == "ok"
    exported = transformers.AutoModelForCausalLM.from_pretrained(workdir / "export" / "hf", dtype=torch.float32)
    assert end_id in exported.generation_config.eos_token_id
    assert hf_generate(exported.eval(), [prompt.input_ids]) == ours


# ---- the study on these bases --------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["llama3.1-8b", "qwen2.5-0.5b", "mistral-7b"])
def test_the_bases_study_runs_the_papers_grid_on_a_base_by_name(base, tmp_path):
    cells = grid.expand(bases.get_config(f"{base},/models/{base},mini"))
    assert [c.name for c in cells][:2] == [f"{base.replace('.', '_')}.base", f"{base}.lima-en.ft.lr1e-6"]
    assert len(cells) == 7 and len(grid.expand(bases.get_config(f"{base},/models/{base}"))) == 25
    config = grid.experiment_config(cells[-1])
    assert (config.model.source, config.model.hub_name, config.train.max_steps) == (f"/models/{base}",
                                                                                   HUB_NAMES[base], 50)
    assert config.lora.rank > 0 and config.optim.lr == 1e-4 and base in paper.BASES
    with pytest.raises(ValueError, match="BASE,SOURCE"):
        bases.get_config("gpt2,/m")


def test_biases_have_logical_axes_and_the_new_fields_survive_a_workdir(tmp_path):
    config = PRESETS["tiny"].replace(qkv_bias=True, rope_type="llama3", rope_factor=8.0, sliding_window=64)
    specs = nn.get_partition_spec(init_boxed(config))["layers"]["attn"]
    assert [specs[p]["bias"] for p in "qkv"] == [PartitionSpec("layers", "heads")] + [
        PartitionSpec("layers", "kv_heads")] * 2
    save_model_info(tmp_path, config)
    assert read_config(tmp_path) == config


def test_generation_configs_end_of_turn_ids_join_the_models_eos(tmp_path):
    """An instruct model's generation_config.json names its end-of-turn token (Llama 3's <|eot_id|>, Qwen2.5's
    <|im_end|>) beside config.json's EOS, and transformers' generate stops at both: so does ours."""
    config = get_preset("tiny")
    directory = save_hf_dir(config, xlit_jax.load("preset:tiny").params, tmp_path / "hf")
    (directory / GENERATION_CONFIG).write_text(json.dumps({"eos_token_id": [config.eos_token_ids[0], 7]}))
    assert xlit_jax.load(directory).config.eos_token_ids == (*config.eos_token_ids, 7)
    assert load_config(directory).eos_token_ids == (*config.eos_token_ids, 7)
    (directory / GENERATION_CONFIG).write_text(json.dumps({"eos_token_id": "<|im_end|>"}))
    with pytest.raises(WeightsError, match="generation_config.json: eos_token_id '<|im_end|>' is not a token id"):
        load_config(directory)
