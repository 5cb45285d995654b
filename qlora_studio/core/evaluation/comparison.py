"""A finished run's base and tuned model behind one interface, for evaluation and chat.

One model is kept in memory: for LoRA / QLoRA runs the base model carries the adapter and
peft's ``disable_adapter()`` switches it off for the base's turn. A full fine-tune has no
adapter, so its base and tuned models are both loaded. Answers come batched (``generate``) or
streamed a token at a time with the sides interleaved (``stream``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qlora_studio.config import RunConfig
from qlora_studio.core.data.templates import stop_token_ids
from qlora_studio.core.errors import StudioError
from qlora_studio.core.evaluation.settings import (  # noqa: F401 (also importable from here)
    SIDES,
    EvaluationError,
    GenerationSettings,
)
from qlora_studio.core.events import NullReporter, Reporter, say


class ComparisonModel:
    """A run's base and tuned model behind one interface; ``side`` is "base" or "tuned"."""

    def __init__(self, run_dir: Path, cfg: RunConfig, tokenizer, model, base_model, device: str):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = model  # a PeftModel (LoRA / QLoRA) or the tuned full model
        self.base_model = base_model  # only for full fine-tunes; None when the adapter toggles
        self.device = device
        self.stop_ids = stop_token_ids(tokenizer)
        self._lock = threading.Lock()  # one generation at a time: the adapter switch is global

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, run_dir: Path, *, device: str = "auto", reporter: Reporter | None = None
    ) -> ComparisonModel:
        """Load the run's base model and its adapter (or both models of a full fine-tune)."""
        from qlora_studio.core.models.loading import pick_device
        from qlora_studio.core.run_folder import trained_output

        reporter = reporter or NullReporter()
        run_dir = Path(run_dir)
        cfg, output_dir = trained_output(run_dir, EvaluationError)
        device = pick_device(device)
        base_dir = _base_model_dir(run_dir, cfg, reporter)
        tokenizer = _tokenizer_of(output_dir, base_dir, cfg)
        say(reporter, f"Loading the base model {base_dir.name} on {device}")
        base = _load_causal_lm(base_dir, cfg, device, quantize=cfg.method == "qlora")
        if cfg.method == "full":
            say(reporter, f"Loading the tuned model from {output_dir}")
            tuned = _load_causal_lm(output_dir, cfg, device, quantize=False)
            return cls(run_dir, cfg, tokenizer, tuned, base, device)
        from peft import PeftModel

        say(reporter, f"Attaching the adapter from {output_dir}")
        try:
            model = PeftModel.from_pretrained(base, str(output_dir))
        except Exception as exc:  # wrong base, damaged files
            raise EvaluationError(
                f"the adapter in {output_dir} does not load onto {base_dir}: {exc}",
                "the run's base model must be the one it was trained on",
            ) from exc
        model.eval()
        return cls(run_dir, cfg, tokenizer, model, None, device)

    def close(self) -> None:
        """Drop the models and give their memory back."""
        import gc

        self.model = self.base_model = None
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def use(self, side: str) -> Iterator[Any]:
        """The model that answers for ``side``, with the adapter off for "base"."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        with self._lock:
            if side == "tuned":
                yield self.model
            elif self.base_model is not None:
                yield self.base_model
            else:
                with self.model.disable_adapter():
                    yield self.model

    # ---- prompts ------------------------------------------------------------------------------
    def prompt_text(self, messages: list[dict]) -> str:
        """The conversation rendered with the run's chat template, ready for the answer."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _encode(self, texts: list[str]):
        return self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)

    # ---- generation ---------------------------------------------------------------------------
    def generate(
        self, conversations: list[list[dict]], side: str, settings: GenerationSettings
    ) -> list[tuple[str, bool]]:
        """Answer each conversation; returns (answer, stopped at a stop token) pairs."""
        import torch

        settings.validate()
        tok = self.tokenizer
        tok.padding_side = "left"  # generation continues from the right edge of every row
        batch = self._encode([self.prompt_text(c) for c in conversations])
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "eos_token_id": self.stop_ids,
            "pad_token_id": tok.pad_token_id,
            "do_sample": settings.temperature > 0,
        }
        if settings.temperature > 0:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            torch.manual_seed(settings.seed)
        else:  # greedy: silence the sampling defaults some generation configs carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self.use(side) as model, torch.inference_mode():
            out = model.generate(**batch, **kwargs)
        width = batch["input_ids"].shape[1]
        answers = []
        for row in out[:, width:].tolist():
            stop_at = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
            kept = row if stop_at is None else row[:stop_at]
            answers.append(
                (tok.decode(kept, skip_special_tokens=True).strip(), stop_at is not None)
            )
        return answers

    def stream(
        self,
        conversations: dict[str, list[dict]],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
    ) -> Iterator[tuple[str, str]]:
        """Generate for each side in ``conversations`` ({side: messages}) a token at a time,
        the sides interleaved; yields (side, new text) as the text grows."""
        import torch

        settings.validate()
        states = {}
        for side, messages in conversations.items():
            ids = self._encode([self.prompt_text(messages)])["input_ids"]
            states[side] = {"next": ids, "cache": None, "tokens": [], "text": "", "done": False}
        generator = torch.Generator().manual_seed(settings.seed)
        for _ in range(settings.max_new_tokens):
            if cancel is not None and cancel.is_set():
                return
            live = [s for s, st in states.items() if not st["done"]]
            if not live:
                break
            for side in live:
                st = states[side]
                with self.use(side) as model, torch.inference_mode():
                    out = model(input_ids=st["next"], past_key_values=st["cache"], use_cache=True)
                st["cache"] = out.past_key_values
                token = _pick(out.logits[0, -1].float(), settings, generator)
                if token in self.stop_ids:
                    st["done"] = True
                    yield from self._flush(side, st)
                    continue
                st["tokens"].append(token)
                st["next"] = torch.tensor([[token]], device=self.device)
                yield from self._flush(side, st, partial=True)
        for side, st in states.items():
            if not st["done"]:
                yield from self._flush(side, st)

    def _flush(self, side: str, st: dict, partial: bool = False) -> Iterator[tuple[str, str]]:
        text = self.tokenizer.decode(st["tokens"], skip_special_tokens=True)
        if partial and text.endswith("\ufffd"):
            return  # maybe half a multi-byte character: wait for the next token
        piece, st["text"] = text[len(st["text"]) :], text
        if piece:
            yield side, piece

    # ---- loss ---------------------------------------------------------------------------------
    def completion_losses(self, examples: list, side: str, batch_size: int = 8) -> list[tuple]:
        """(summed loss, trained tokens) of each example's completion tokens, for ``side``."""
        import torch

        from qlora_studio.core.data.batching import PaddingCollator
        from qlora_studio.core.data.templates import tokenize_example

        collate = PaddingCollator(self.tokenizer.pad_token_id)
        rows = [
            tokenize_example(
                e, self.tokenizer, max_length=self.cfg.data.max_length, train_on="completions"
            )
            for e in examples
        ]
        results = []
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i : i + batch_size])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self.use(side) as model, torch.inference_mode():
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            counted = (labels != -100).sum(dim=1)
            for loss_sum, n in zip(losses.sum(dim=1).tolist(), counted.tolist(), strict=True):
                results.append((loss_sum, n))
        return results


def _pick(logits, settings: GenerationSettings, generator) -> int:
    import torch

    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < settings.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs.cpu() / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice.to(order.device)])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


# ---------------------------------------------------------------- run folder helpers


def _base_model_dir(run_dir: Path, cfg: RunConfig, reporter: Reporter) -> Path:
    from qlora_studio.core.models.sources import resolve_model
    from qlora_studio.core.run_folder import SUMMARY_FILE

    try:
        recorded = json.loads((run_dir / SUMMARY_FILE).read_text()).get("model_dir")
    except (OSError, ValueError):
        recorded = None
    if recorded and (Path(recorded) / "config.json").exists():
        return Path(recorded)
    return resolve_model(
        cfg.model.source,
        allow_pickle=cfg.model.allow_pickle,
        trust_remote_code=cfg.model.trust_remote_code,
        reporter=reporter,
    )


def _tokenizer_of(output_dir: Path, base_dir: Path, cfg: RunConfig):
    """The tokenizer saved with the adapter: it carries the chat template the run used."""
    from qlora_studio.core.data.templates import resolve_chat_template
    from qlora_studio.core.models.sources import load_tokenizer

    try:
        tokenizer = load_tokenizer(output_dir, trust_remote_code=cfg.model.trust_remote_code)
    except StudioError:
        tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        from qlora_studio.core.models.loading import model_type

        resolve_chat_template(tokenizer, cfg.data.chat_template, model_type(base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_causal_lm(folder: Path, cfg: RunConfig, device: str, *, quantize: bool):
    """Load for inference: on a GPU as trained (4-bit for QLoRA); on the CPU in fp32."""
    from qlora_studio.core.models.loading import load_causal_lm

    return load_causal_lm(
        folder, cfg, device, purpose="infer", quantize=quantize, error=EvaluationError
    )
