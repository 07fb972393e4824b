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


# --- tiny run configs (tests/test_loop.py, test_methods_experiment.py, test_rank.py, test_sprec.py) ---
# Each stage's tests lay only the sections they size on one common part, so a config reads as what the
# test changes; it goes through a YAML file and load_config, the path `rlrf <command> -c` takes.


def _laid_over(base: dict, top: dict) -> dict:
    """`top` laid over `base`: sections merge key by key, any other value replaces."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = _laid_over(below, value) if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir):
    """Builds a RunConfig on the tiny Llama, run in tmp_path/run, seed 0, one thread: `tiny_config(*layers,
    **sections)` lays each layer (a dict of sections), then the sections, over that common part."""
    import yaml

    from rlrf.core.config import load_config

    def build(*layers: dict, **sections: dict):
        config = {"run_dir": str(tmp_path / "run"), "seed": 0, "threads": 1, "llm": {"model": str(tiny_model_dir)}}
        for layer in (*layers, sections):
            config = _laid_over(config, layer)
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(config))
        return load_config(path)

    return build


@pytest.fixture
def tiny_summary_loop():
    """The summary loop (generate, score, align) at its smallest: 4 summaries of 12 tokens a user, a hashing
    encoder, a tiny DLCM reward, 2 DPO steps, 3 held-out users; a layer for `tiny_config`."""
    return {
        "data": {"max_users": 40},
        "generate": {"n": 4, "max_new_tokens": 12, "batch_size": 32},
        "encoder": {"model": "hashing:32"},
        "reward": {"models": ["dlcm"], "epochs": 6, "knowledge_dropout": 0.0, "embed_dim": 8, "hidden": 16,
                   "adapter_out": 8, "adapter_hidden": 16},
        "align": {"trainer_args": {"max_steps": 2, "max_length": 640, "learning_rate": 1e-3}},
        # NDCG ties for nearly every summary under an untrained reranker: the continuous margin does not
        "score": {"metric": "margin"},
        "loop": {"eval_users": 3},
    }
