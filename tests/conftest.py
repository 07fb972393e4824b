"""Shared pytest fixtures; each block is owned by the stage named in its header."""

# --- policy LLM fixtures (issue 4: tests/test_llm.py, tests/test_generate.py) ---
# A tiny byte-level BPE tokenizer with SmolLM2's chat tokens and template, trained in a second on
# ml-100k titles, and a random-weight 2-layer Llama built from a config on top of it: the whole
# generate path runs on them in seconds. Only the @slow test uses the real SmolLM2 weights.

import os

import pytest

# `llm.dtype: auto` means bf16 on CPUs with AVX-512 BF16 / AMX (rlrf/core/precision.py); the suite's
# exact-equality tests are written for float32, so `auto` means float32 here on every machine
# (subprocesses inherit it). tests/test_precision.py covers bf16 and the probe explicitly.
os.environ["RLRF_CPU_BF16"] = "0"

SMOL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlrf.data.dataset import bundled_ml100k, read_atomic

    titles = read_atomic(bundled_ml100k() / "ml-100k.item")["movie_title"].tolist()
    corpus = titles + [
        "You are an expert in movies who describes a user's taste precisely and concisely.",
        "Movies this user watched, oldest first, with the user's rating out of 5: rated",
        "Describe this user's preferences in a short paragraph: favourite genres, directors, actors.",
        "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror",
        "Musical Mystery Romance Sci-Fi Thriller War Western user profile age gender occupation",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = SMOL_CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A random 2-layer Llama (hidden 32) + the tiny tokenizer, saved as a HF model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # logits with a spread (std ~2): context-dependent, neither uniform nor one token
        model.model.embed_tokens.weight.normal_(0, 1.0)
        model.lm_head.weight.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ml100k_small():
    """The real bundled ml-100k, 40 random users (seeded)."""
    from rlrf.core.config import DataConfig
    from rlrf.data.dataset import load_dataset

    return load_dataset(DataConfig(max_users=40), seed=0)
