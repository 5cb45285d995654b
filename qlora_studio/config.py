"""The configuration of one fine-tuning run: dataclasses, validation, YAML round trip.

stdlib + yaml only: the GUI and the CLI import this without loading torch.
Every field has a default and a help text (``field(metadata={"help": ...})``); ``validate()``
raises :class:`ConfigError` naming the field at fault and, for choices, the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

# Every choice a run offers, defined once: the dataclass fields below are typed with these, the
# GUI's combo boxes and the CLI's argparse choices read the tuples, the error lists them.
Method = Literal["full", "lora", "qlora"]
DataFormat = Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text"]
ChatTemplate = Literal["auto", "tokenizer", "gemma", "chatml", "llama3", "alpaca", "plain"]
TrainOn = Literal["completions", "all"]
# how rows become batches: auto = padding_free when the model's attention keeps packed rows
# apart (checked on the loaded model), else by_length
Packing = Literal["auto", "off", "by_length", "padding_free"]
QuantType = Literal["nf4", "fp4"]
ComputeDtype = Literal["auto", "bf16", "fp16", "fp32"]
Dtype = Literal["bf16", "fp16", "fp32"]  # a compute dtype once "auto" is resolved
Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
Device = Literal["auto", "cuda", "cpu"]
LossImpl = Literal["auto", "chunked", "liger", "full_logits"]
FullRecipe = Literal["lean", "mixed"]
FitMode = Literal["off", "auto"]
# none = one process; ddp = one process per device, each with the whole model, gradients
# averaged (torch DistributedDataParallel through the Trainer, launched by torchrun); fsdp =
# weights, gradients and optimizer states sharded across the GPUs (FSDP2 through accelerate);
# deepspeed = ZeRO through the Trainer's DeepSpeed integration (only when it is installed)
Strategy = Literal["none", "ddp", "fsdp", "deepspeed"]
ExportFormat = Literal["adapter", "merged", "gguf-lora", "gguf"]
GgufType = Literal["f16", "bf16", "q8_0", "q4_0"]  # what this app writes; K-quants need llama.cpp

METHODS: tuple[Method, ...] = get_args(Method)
DATA_FORMATS: tuple[DataFormat, ...] = get_args(DataFormat)
CHAT_TEMPLATES: tuple[ChatTemplate, ...] = get_args(ChatTemplate)
TRAIN_ON: tuple[TrainOn, ...] = get_args(TrainOn)
PACKINGS: tuple[Packing, ...] = get_args(Packing)
PACKING_LABELS: dict[Packing, str] = {
    "auto": "auto (padding-free when exact for the model)",
    "off": "off: random batches, padded",
    "by_length": "by length: batches of similar lengths, padded",
    "padding_free": "padding-free: rows concatenated, no padding",
}
QUANT_TYPES: tuple[QuantType, ...] = get_args(QuantType)
COMPUTE_DTYPES: tuple[ComputeDtype, ...] = get_args(ComputeDtype)
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)
DEVICES: tuple[Device, ...] = get_args(Device)
LOSS_IMPLS: tuple[LossImpl, ...] = get_args(LossImpl)
FULL_RECIPES: tuple[FullRecipe, ...] = get_args(FullRecipe)
FIT_MODES: tuple[FitMode, ...] = get_args(FitMode)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
GGUF_TYPES: tuple[GgufType, ...] = get_args(GgufType)

# what the GUI, the CLI's text output and the messages call each method
METHOD_LABELS: dict[Method, str] = {"full": "Full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
# one line each: what trains and what stays frozen (the GUI's tooltips)
METHOD_SUMMARIES: dict[Method, str] = {
    "full": "Every weight trains: ~16-18 bytes per parameter before activations.",
    "lora": "Frozen 16-bit base + small trainable low-rank adapters.",
    "qlora": "Frozen base stored in 4-bit NF4 + LoRA: the least memory.",
}
# what the Export page, the CLI's help and the model cards call each export format ...
EXPORT_FORMAT_LABELS: dict[ExportFormat, str] = {
    "adapter": "LoRA adapter (peft)",
    "merged": "Merged model (safetensors, 16-bit)",
    "gguf-lora": "LoRA adapter as GGUF (llama.cpp --lora, Ollama ADAPTER)",
    "gguf": "Merged model as GGUF (llama.cpp, Ollama)",
}
# ... and one line each: what it is for and what it costs (the GUI's tooltips)
EXPORT_FORMAT_SUMMARIES: dict[ExportFormat, str] = {
    "adapter": "A copy of the trained adapter (or full model) for transformers + peft; instant.",
    "merged": "One standalone model for tools without adapters; loads the 16-bit base on the "
    "CPU (about 2 bytes per parameter of RAM) and writes as much to disk.",
    "gguf-lora": "A small file llama.cpp and Ollama apply on top of the base model; no merge, "
    "a few seconds. Not for full fine-tunes or DoRA.",
    "gguf": "One file llama.cpp and Ollama run on their own; merges on the CPU first (the "
    "16-bit base in RAM), then writes the GGUF in the type chosen.",
}
GGUF_TYPE_LABELS: dict[GgufType, str] = {
    "f16": "F16 (2 bytes per weight, lossless for a 16-bit merge)",
    "bf16": "BF16 (2 bytes per weight, bf16's range)",
    "q8_0": "Q8_0 (about 1.06 bytes per weight, near lossless)",
    "q4_0": "Q4_0 (about 0.56 bytes per weight, smallest)",
}
# the named chat templates (``data.chat_template``): every choice but auto and tokenizer
TEMPLATE_NAMES: tuple[ChatTemplate, ...] = tuple(
    t for t in CHAT_TEMPLATES if t not in ("auto", "tokenizer")
)
# the row formats a dataset can have (``data.format``): every choice but auto
ROW_FORMATS: tuple[DataFormat, ...] = tuple(f for f in DATA_FORMATS if f != "auto")
# the optimizers that keep Adam's two states per value, and those of them with 8-bit states
EIGHT_BIT_OPTIMIZERS: tuple[Optimizer, ...] = ("adamw_8bit", "paged_adamw_8bit")
ADAM_OPTIMIZERS: tuple[Optimizer, ...] = tuple(o for o in OPTIMIZERS if o != "sgd")


def resolve_compute_dtype(requested: str, device: str, bf16_supported: bool = True) -> Dtype:
    """The compute dtype a run uses: ``requested`` unless it is "auto", which means bf16 on a
    GPU that supports it (compute capability 8.0+), fp16 on an older GPU, and fp32 on the CPU
    (bf16 compute on the CPU made the loss climb where fp32 learned). The one rule training,
    the estimator and auto-fit share; pure, so planning for a GPU needs no torch."""
    if requested == "auto":
        if device != "cuda":
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    if requested not in get_args(Dtype):
        raise ConfigError(
            "quant.compute_dtype",
            f"{requested!r} is not allowed",
            "allowed values: " + ", ".join(COMPUTE_DTYPES),
        )
    return requested  # type: ignore[return-value]  # checked against Dtype just above


class ConfigError(ValueError):
    """A config value is wrong. ``field`` is the dotted name of the field at fault."""

    def __init__(self, field_name: str, message: str, hint: str = ""):
        self.field = field_name
        self.message = message
        self.hint = hint
        super().__init__(f"{field_name}: {message}" + (f" ({hint})" if hint else ""))


def _help(default: Any, text: str, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _choice(section: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{section}.{name}",
            f"{value!r} is not allowed",
            "allowed values: " + ", ".join(allowed),
        )


def _positive(section: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        need = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(f"{section}.{name}", f"{value!r} must be a number {need}")


@dataclass
class ModelConfig:
    source: str = _help(
        "demo",
        "'demo' (Gemma 3 270M), a local Hugging Face folder, a .gguf file, or a hub id",
    )
    allow_pickle: bool = _help(False, "allow .bin/.pt pickle weights (they can run code)")
    trust_remote_code: bool = _help(False, "allow a model's own Python code from its folder")

    def validate(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(
                "model.source", "is empty", "use 'demo', a folder, a .gguf or a hub id"
            )


@dataclass
class DataConfig:
    path: str = _help(
        "", "training data: .jsonl .json .csv .tsv .parquet .txt, a folder or a hub id"
    )
    format: DataFormat = _help("auto", "row format; 'auto' detects it from the columns")
    columns: dict[str, str] = _help(
        None, "map our names to yours, e.g. {prompt: question, completion: answer}", factory=dict
    )
    chat_template: ChatTemplate | str = _help(
        "auto", "'auto' = the tokenizer's template, or a fallback chosen for the model"
    )
    max_length: int = _help(512, "tokens per example after templating; longer rows are truncated")
    validation_split: float = _help(0.1, "share of rows held out for evaluation (0 = none)")
    eval_path: str = _help("", "a separate validation file (overrides validation_split)")
    train_on: TrainOn = _help(
        "completions", "'completions' = loss on answers only; 'all' = every token"
    )
    system_prompt: str = _help("", "system message added to conversations that have none")
    packing: Packing = _help(
        "auto",
        "how rows become batches: off (random, padded), by_length (similar lengths, padded), "
        "padding_free (rows concatenated with position ids restarting and no attention "
        "between rows); auto = padding_free when the model's attention keeps rows apart",
    )
    max_tokens_per_batch: int = _help(
        0,
        "cap on the tokens one batch computes, padding included (0 = batch_size x max_length);"
        " bounds the worst-case memory of packed batches",
    )

    def validate(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError("data.path", "is empty", "point it at a dataset file or folder")
        _choice("data", "format", self.format, DATA_FORMATS)
        _choice("data", "train_on", self.train_on, TRAIN_ON)
        _choice("data", "packing", self.packing, PACKINGS)
        if not isinstance(self.chat_template, str) or not self.chat_template:
            raise ConfigError(
                "data.chat_template", "is empty", "allowed: " + ", ".join(CHAT_TEMPLATES)
            )
        if self.chat_template not in CHAT_TEMPLATES and "{%" not in self.chat_template:
            raise ConfigError(
                "data.chat_template",
                f"{self.chat_template!r} is not a known template",
                "allowed values: " + ", ".join(CHAT_TEMPLATES) + ", or a Jinja template string",
            )
        if not isinstance(self.columns, dict):
            raise ConfigError("data.columns", "must be a mapping", "e.g. {prompt: question}")
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ConfigError("data.max_length", f"{self.max_length!r} must be an integer >= 8")
        vs = self.validation_split
        if not isinstance(vs, (int, float)) or not 0 <= vs < 1:
            raise ConfigError("data.validation_split", f"{vs!r} must be in [0, 1)")
        budget = self.max_tokens_per_batch
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            raise ConfigError(
                "data.max_tokens_per_batch",
                f"{budget!r} must be an integer >= 0",
                "0 means batch_size x max_length",
            )
        if 0 < budget < self.max_length:
            raise ConfigError(
                "data.max_tokens_per_batch",
                f"{budget} is below data.max_length ({self.max_length}): the longest row "
                "would not fit in a batch",
                f"set it to at least {self.max_length}, or 0",
            )


@dataclass
class LoraConfig:
    r: int = _help(16, "adapter rank; memory and capacity grow with it")
    alpha: int = _help(32, "scaling numerator (update is scaled by alpha/r); usually 2*r")
    dropout: float = _help(
        0.0,
        "dropout on the adapter input; 0 (as torchtune's QLoRA recipes) saves no copy of each "
        "adapter's input for backward, > 0 keeps one per adapter plus its mask",
    )
    target_modules: list[str] | str = _help(
        "all-linear", "'all-linear' or a list such as [q_proj, k_proj, v_proj, o_proj]"
    )
    use_rslora: bool = _help(False, "rank-stabilised scaling alpha/sqrt(r)")
    use_dora: bool = _help(False, "weight-decomposed LoRA (slower, more memory)")

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError("lora.r", f"{self.r!r} must be an integer >= 1", "try 8, 16 or 32")
        _positive("lora", "alpha", self.alpha)
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError("lora.dropout", f"{self.dropout!r} must be in [0, 1)")
        tm = self.target_modules
        if isinstance(tm, str):
            if tm != "all-linear":
                raise ConfigError(
                    "lora.target_modules", f"{tm!r} is not allowed", "'all-linear' or a list"
                )
        elif not (isinstance(tm, list) and tm and all(isinstance(t, str) and t for t in tm)):
            raise ConfigError("lora.target_modules", "must be 'all-linear' or a list of names")


@dataclass
class QuantConfig:
    quant_type: QuantType = _help("nf4", "4-bit data type of the frozen base: nf4 (paper) or fp4")
    double_quant: bool = _help(True, "quantize the quantization constants too (~0.37 bit/param)")
    compute_dtype: ComputeDtype = _help(
        "auto",
        "dtype of the 4-bit base's dequantized matmuls (QLoRA) and of the frozen 16-bit base "
        "(LoRA); auto = bf16 on a GPU with bf16 (fp16 on older GPUs), fp32 on the CPU",
    )

    def validate(self) -> None:
        _choice("quant", "quant_type", self.quant_type, QUANT_TYPES)
        _choice("quant", "compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        if not isinstance(self.double_quant, bool):
            raise ConfigError("quant.double_quant", f"{self.double_quant!r} must be true or false")


@dataclass
class TrainConfig:
    epochs: float = _help(1.0, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = _help(0, "optimizer steps to run; 0 = use epochs")
    batch_size: int = _help(4, "examples per device step; activation memory grows with it")
    grad_accum: int = _help(1, "steps accumulated per optimizer step (effective batch multiplier)")
    lr: float = _help(2e-4, "peak learning rate; 1e-4..3e-4 for LoRA, ~1e-5 for full")
    scheduler: Scheduler = _help("cosine", "learning-rate schedule after warmup")
    warmup_ratio: float = _help(0.03, "share of steps spent warming the learning rate up")
    weight_decay: float = _help(0.0, "AdamW weight decay")
    max_grad_norm: float = _help(1.0, "gradient clipping")
    optimizer: Optimizer = _help("paged_adamw_8bit", "8-bit/paged optimizers keep Adam state small")
    gradient_checkpointing: bool = _help(
        True, "recompute activations: far less memory, ~30% slower"
    )
    seed: int = _help(42, "random seed for data order and adapter init")
    logging_steps: int = _help(1, "report loss every N steps")
    eval_steps: int = _help(0, "evaluate every N steps; 0 = at the end only")
    save_steps: int = _help(50, "checkpoint every N steps (a stopped run resumes from the last)")
    save_total_limit: int = _help(2, "checkpoints kept on disk")
    device: Device = _help("auto", "'auto' (cuda if present), 'cuda' or 'cpu'")
    loss_impl: LossImpl = _help(
        "auto",
        "how the loss is computed: chunked = the lm_head runs a chunk of trained tokens at a time "
        "(no batch x seq x vocab logits); liger = liger-kernel's fused linear cross-entropy "
        "(CUDA); auto = liger when installed on CUDA, else chunked; full_logits = the whole "
        "batch's logits at once (more memory, for comparison)",
    )
    loss_chunk_tokens: int = _help(
        256,
        "trained tokens per lm_head chunk (chunked loss); the logits memory grows with it "
        "(about 8 B x chunk x vocabulary)",
    )
    full_recipe: FullRecipe = _help(
        "lean",
        "full fine-tuning: lean = bf16 weights on a GPU, the optimizer (paged 8-bit AdamW by "
        "default) stepped in backward (no clipping across all parameters, no grad "
        "accumulation; 8-bit states for the embeddings too); mixed = fp32 master weights with "
        "bf16 autocast. The CPU (and a GPU without bf16) trains fp32 weights; lean still steps "
        "in backward there",
    )
    fit: FitMode = _help(
        "off",
        "auto = before the model loads, pick gradient checkpointing and a micro-batch with "
        "gradient accumulation that keep the effective batch (batch_size x grad_accum) and fit "
        "the GPU, using the memory estimate; off = use the settings as they are",
    )

    def validate(self) -> None:
        _positive("train", "epochs", self.epochs)
        for name in ("max_steps", "eval_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"train.{name}", f"{value!r} must be an integer >= 0")
        for name in (
            "batch_size",
            "grad_accum",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "loss_chunk_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"train.{name}", f"{value!r} must be an integer >= 1")
        _positive("train", "lr", self.lr)
        _choice("train", "scheduler", self.scheduler, SCHEDULERS)
        _choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        _choice("train", "device", self.device, DEVICES)
        _choice("train", "loss_impl", self.loss_impl, LOSS_IMPLS)
        _choice("train", "full_recipe", self.full_recipe, FULL_RECIPES)
        _choice("train", "fit", self.fit, FIT_MODES)
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError("train.warmup_ratio", f"{self.warmup_ratio!r} must be in [0, 1)")
        _positive("train", "weight_decay", self.weight_decay, allow_zero=True)
        _positive("train", "max_grad_norm", self.max_grad_norm, allow_zero=True)


@dataclass
class OutputConfig:
    dir: str = _help("runs", "folder that holds the run folders")
    name: str = _help("", "run folder name; empty = method + timestamp")

    def validate(self) -> None:
        if not isinstance(self.dir, str) or not self.dir.strip():
            raise ConfigError("output.dir", "is empty", "e.g. runs")
        if not isinstance(self.name, str):
            raise ConfigError("output.name", f"{self.name!r} must be text")
        if self.name:
            check_run_name(self.name)


@dataclass
class DistributedConfig:
    strategy: Strategy = _help(
        "none",
        "none = one process; ddp = one process per GPU (or CPU process), each with the whole "
        "model, gradients averaged; fsdp = weights, gradients and optimizer states split across "
        "the GPUs, so a model too big for one fits on several (GPUs only); deepspeed = ZeRO "
        "stage 2 or 3 (when the deepspeed package is installed); train.batch_size is per process",
    )
    processes: int = _help(1, "processes on this machine (one per GPU); 1 = no launch")
    num_machines: int = _help(1, "machines taking part; each runs the same command")
    machine_rank: int = _help(0, "this machine's number, 0 .. num_machines - 1 (0 = main)")
    main_address: str = _help("127.0.0.1", "the main machine's address (several machines)")
    main_port: int = _help(29500, "a free TCP port on the main machine")
    gpus: str = _help(
        "all",
        "which of this machine's GPUs to use: all, or NVML indices such as 0,1 "
        "(CUDA_VISIBLE_DEVICES for the run)",
    )
    zero_stage: int = _help(
        2, "deepspeed only: 2 = optimizer states and gradients split, 3 = the weights too"
    )
    config_file: str = _help(
        "",
        "deepspeed only: an existing DeepSpeed JSON config used as it is (zero_stage is then "
        "ignored)",
    )

    @property
    def shards_weights(self) -> bool:
        """Whether the strategy splits the weights across GPUs (fsdp, ZeRO-3). Both shard only
        floating-point parameters, so a QLoRA base then stores its packed 4-bit values in the
        compute dtype (bitsandbytes' ``bnb_4bit_quant_storage``), as FSDP-QLoRA does."""
        return self.strategy == "fsdp" or (self.strategy == "deepspeed" and self.zero_stage == 3)

    @property
    def gpu_indices(self) -> list[int] | None:
        """The chosen NVML indices, or None for all."""
        if self.gpus.strip() == "all":
            return None
        return [int(part) for part in self.gpus.split(",")]

    @property
    def world_size(self) -> int:
        return self.processes * self.num_machines if self.strategy != "none" else 1

    def validate(self) -> None:
        _choice("distributed", "strategy", self.strategy, STRATEGIES)
        for name in ("processes", "num_machines"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"distributed.{name}", f"{value!r} must be an integer >= 1")
        rank = self.machine_rank
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < self.num_machines:
            raise ConfigError(
                "distributed.machine_rank",
                f"{rank!r} must be an integer from 0 to num_machines - 1 ({self.num_machines - 1})",
            )
        if not isinstance(self.main_port, int) or not 1 <= self.main_port <= 65535:
            raise ConfigError("distributed.main_port", f"{self.main_port!r} is not a TCP port")
        if not isinstance(self.main_address, str) or not self.main_address.strip():
            raise ConfigError("distributed.main_address", "is empty", "e.g. 10.0.0.1")
        self._validate_gpus()
        if self.zero_stage not in (2, 3):
            raise ConfigError("distributed.zero_stage", f"{self.zero_stage!r} must be 2 or 3")
        if not isinstance(self.config_file, str):
            raise ConfigError("distributed.config_file", f"{self.config_file!r} must be a path")
        if (
            self.strategy == "none"
            and self.world_size == 1
            and (self.processes > 1 or self.num_machines > 1)
        ):
            raise ConfigError(
                "distributed.strategy",
                f"is none, but {self.processes} processes on {self.num_machines} machine(s) "
                "were asked for",
                "set distributed.strategy: ddp, or processes: 1",
            )
        indices = self.gpu_indices
        if indices is not None and self.strategy != "none" and self.processes > len(indices):
            raise ConfigError(
                "distributed.gpus",
                f"lists {len(indices)} GPU(s) for {self.processes} processes",
                f"list {self.processes} GPUs (e.g. {','.join(map(str, range(self.processes)))}), "
                "or set it to all",
            )
        if self.strategy != "none" and self.world_size < 2:
            raise ConfigError(
                "distributed.processes",
                f"{self.strategy} needs at least 2 processes in all, got {self.world_size}",
                "set distributed.processes: 2 (or more), or strategy: none",
            )

    def _validate_gpus(self) -> None:
        text = self.gpus
        ok = isinstance(text, str) and (
            text.strip() == "all" or all(part.strip().isdigit() for part in text.split(","))
        )
        if ok and text.strip() != "all":
            parts = [int(part) for part in text.split(",")]
            ok = len(set(parts)) == len(parts)
        if not ok:
            raise ConfigError(
                "distributed.gpus",
                f"{text!r} must be all or distinct GPU indices separated by commas",
                "e.g. all, 0 or 0,1",
            )


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in "123456789"
}


def check_run_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is a plain folder name that stays inside output.dir on
    every system: no separators, no '.'/'..', not hidden, no control or Windows-reserved
    characters or names, at most 100 characters."""
    problem = ""
    if not name or name != name.strip():
        problem = "must not be empty or start or end with a space"
    elif name.startswith("."):
        problem = "must not start with '.' (that names a hidden or parent folder)"
    elif any(c in name for c in '/\\:*?"<>|') or any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = 'must not contain / \\ : * ? " < > | or control characters'
    elif name.endswith("."):
        problem = "must not end with '.'"
    elif name.split(".")[0].upper() in _WINDOWS_RESERVED:
        problem = "is a reserved device name on Windows"
    elif len(name) > 100:
        problem = "must be at most 100 characters"
    if problem:
        raise ConfigError(
            "output.name",
            f"{name!r} {problem}",
            "use a plain folder name such as my-run-1 (letters, digits, - _ .)",
        )


@dataclass
class RunConfig:
    method: Method = _help("qlora", " | ".join(METHODS))
    model: ModelConfig = _help(None, "the base model", factory=ModelConfig)
    data: DataConfig = _help(None, "the dataset", factory=DataConfig)
    lora: LoraConfig = _help(None, "LoRA adapter (lora and qlora)", factory=LoraConfig)
    quant: QuantConfig = _help(
        None, "4-bit base (qlora); compute_dtype also sets LoRA's base dtype", factory=QuantConfig
    )
    train: TrainConfig = _help(None, "optimisation", factory=TrainConfig)
    output: OutputConfig = _help(None, "where runs are written", factory=OutputConfig)
    distributed: DistributedConfig = _help(
        None, "several processes or GPUs (DDP)", factory=DistributedConfig
    )

    def validate(self) -> RunConfig:
        _choice("run", "method", self.method, METHODS)
        for section in SECTIONS:
            getattr(self, section).validate()
        if self.distributed.num_machines > 1 and not self.output.name:
            raise ConfigError(
                "output.name",
                "is empty, but several machines train one run: each must find the same folder",
                "set output.name, e.g. --set output.name=my-run (the Slurm script does this)",
            )
        if self.method == "full" and self.train.full_recipe == "lean" and self.train.grad_accum > 1:
            raise ConfigError(
                "train.grad_accum",
                f"{self.train.grad_accum} cannot be used with train.full_recipe: lean (each "
                "parameter is updated in backward, so gradients are not accumulated)",
                "set train.full_recipe: mixed to accumulate gradients, or raise "
                "train.batch_size instead",
            )
        return self

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError("run", "the config must be a mapping of sections")
        unknown = set(data) - {"method", *SECTIONS}
        if unknown:
            raise ConfigError(
                sorted(unknown)[0],
                "is not a config section",
                "sections: method, " + ", ".join(SECTIONS),
            )
        kwargs: dict[str, Any] = {}
        if "method" in data:
            kwargs["method"] = data["method"]
        for section, section_cls in SECTIONS.items():
            values = data.get(section) or {}
            if not isinstance(values, dict):
                raise ConfigError(section, "must be a mapping of fields")
            names = {f.name for f in dataclasses.fields(section_cls)}
            for key in values:
                if key not in names:
                    raise ConfigError(
                        f"{section}.{key}",
                        "is not a known field",
                        "fields: " + ", ".join(sorted(names)),
                    )
            defaults = section_cls()
            coerced = {k: _coerce_like(getattr(defaults, k), v) for k, v in values.items()}
            kwargs[section] = section_cls(**coerced)
        return cls(**kwargs).validate()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("run", f"the file is not valid YAML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("run", f"cannot read {path}: {exc.strerror or exc}") from exc
        if path.suffix.lower() == ".json":
            try:
                cfg = cls.from_dict(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ConfigError("run", f"{path} is not valid JSON: {exc}") from exc
        else:
            cfg = cls.from_yaml(text)
        return cfg.resolve_paths(path.resolve().parent)

    def resolve_paths(self, config_dir: Path) -> RunConfig:
        """Make relative data and model paths absolute: relative to the working folder when
        they exist there, else to the config file's folder, else to the resources' parent
        (so shipped configs work from any folder). Hub ids and 'demo' are left alone."""
        from qlora_studio.resources import resources_dir

        def resolve(value: str) -> str:
            if not value or Path(value).is_absolute():
                return value
            for base in (Path.cwd(), config_dir, resources_dir().parent):
                candidate = base / value
                if candidate.exists():
                    return str(candidate.resolve())
            return value

        self.data.path = resolve(self.data.path)
        self.data.eval_path = resolve(self.data.eval_path)
        if (
            self.model.source.strip().lower() != "demo"
        ):  # never a folder that happens to be named so
            self.model.source = resolve(self.model.source)
        return self

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        tmp.replace(path)
        return path

    def with_overrides(self, assignments: list[str]) -> RunConfig:
        """Apply ``section.field=value`` strings (values parsed as YAML scalars) and revalidate."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(item, "an override must look like section.field=value")
            value = yaml.safe_load(raw) if raw.strip() else ""
            parts = key.split(".")
            if parts == ["method"]:
                data["method"] = value
                continue
            if len(parts) != 2 or parts[0] not in SECTIONS:
                raise ConfigError(key, "is not a known field", "use section.field, e.g. train.lr")
            section, name = parts
            if name not in data[section]:
                names = ", ".join(sorted(data[section]))
                raise ConfigError(key, "is not a known field", f"fields of {section}: {names}")
            data[section][name] = _coerce_like(data[section][name], value)
        return RunConfig.from_dict(data)


def _coerce_like(current: Any, value: Any) -> Any:
    """Keep `--set train.lr=1e-4` a float and `train.epochs=2` a float where the field is one."""
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, float) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(current, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraConfig,
    "quant": QuantConfig,
    "train": TrainConfig,
    "output": OutputConfig,
    "distributed": DistributedConfig,
}


def field_help(section: str, name: str) -> str:
    """The help text of ``section.name`` (used for tooltips and YAML comments)."""
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{section}.{name}")
