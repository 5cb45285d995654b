"""Tiny random models and a tiny real tokenizer, built on disk for fast, real tests.

Each model is a genuine transformers model (Llama, Qwen2, GPT-2 with Conv1D layers, Gemma 3)
saved as safetensors with a fast BPE tokenizer trained here on a small corpus: the same code
paths as a downloaded model, in seconds.
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("llama", "qwen2", "gpt2", "gemma3")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Convert the date to ISO format: 12 March 2021 -> 2021-03-12",
    "User: hello there, how are you today? Assistant: I am fine, thank you.",
    "Question: what is two plus two? Answer: four.",
    "Instruction: summarise the text. Response: a short summary.",
    "### Instruction: ### Input: ### Response: system user assistant",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ -:/.,!?'\"()[]{}",
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def _config(arch: str, vocab_size: int, tok):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config
    from transformers.models.gemma3 import Gemma3TextConfig

    ids = {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **ids,
    )
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=64)
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=512, **ids
        )
    raise ValueError(f"unknown architecture {arch!r}")


def build_tiny_model(arch: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model with its tokenizer to ``folder``; return it."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = _config(arch, len(tok), tok)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# Llama 3 8B as published (config only: inspection and estimates need no weights); the memory,
# model and estimate tests share it.
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
