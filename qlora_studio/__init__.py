"""QLoRA Studio: fine-tune language models locally with full fine-tuning, LoRA and QLoRA."""

__version__ = "0.1.0"
