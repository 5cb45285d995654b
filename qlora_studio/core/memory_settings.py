"""What a memory estimate depends on, and the dtype each tensor is held in: the run
:class:`Settings` an estimate is made for, and the precision rules (bytes per weight,
activation, adapter input, logit) of each method on each device.

Split from ``core/memory.py``, which sums the terms these rules price. Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qlora_studio.config import (
    ComputeDtype,
    Dtype,
    FullRecipe,
    LossImpl,
    Method,
    Optimizer,
    Packing,
    QuantType,
    resolve_compute_dtype,
)
from qlora_studio.core.models.loading import full_weights_dtype

if TYPE_CHECKING:
    from qlora_studio.config import RunConfig

QUANT_BLOCKSIZE = 64  # bitsandbytes quantize_4bit default
NESTED_BLOCKSIZE = 256  # double quant: absmax quantized blockwise in blocks of 256
DTYPE_BYTES: dict[Dtype, int] = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass
class Settings:
    """The run settings an estimate depends on (build it from a RunConfig with
    :meth:`from_config`)."""

    batch_size: int = 4  # examples per step
    seq_len: int = 512  # tokens per row: data.max_length, the worst case (the longest batch)
    lora_r: int = 16
    lora_targets: list[str] | str = "all-linear"  # "all-linear" or leaf names such as "q_proj"
    quant_type: QuantType = "nf4"  # nf4 | fp4: same storage
    double_quant: bool = True
    # bf16 | fp16 | fp32, or auto: resolve_compute_dtype (bf16 on cuda, fp32 on cpu)
    compute_dtype: ComputeDtype = "bf16"
    optimizer: Optimizer = "paged_adamw_8bit"
    gradient_checkpointing: bool = True
    device: str = "cuda"  # "cuda" or "cpu"
    use_dora: bool = False
    lora_dropout: float = 0.0  # > 0 adds a dropout copy of each adapter input
    loss_impl: LossImpl = "auto"  # train.loss_impl
    loss_chunk_tokens: int = 256  # trained tokens per lm_head chunk (chunked loss)
    full_recipe: FullRecipe = "lean"  # lean (step in backward) | mixed (train.full_recipe)
    # data.packing: a padding-free batch is one sequence of its rows' tokens (auto is priced as
    # padding_free, the larger attention mask); data.max_tokens_per_batch caps packed batches
    packing: Packing = "off"
    max_tokens_per_batch: int = 0

    @classmethod
    def from_config(
        cls, cfg: RunConfig, device: str | None = None, bf16_supported: bool = True
    ) -> Settings:
        """The settings of ``cfg``; ``device`` overrides ``train.device`` (pass "cuda" to plan
        for a GPU this machine lacks). ``train.device: auto`` means cuda when NVML sees a GPU,
        and then that GPU says whether it has bf16. ``bf16_supported`` is what the GPU planned
        for says (``GpuInfo.bf16_supported``); it resolves ``quant.compute_dtype: auto``."""
        if device is None:
            device = cfg.train.device
            if device == "auto":
                from qlora_studio.core.gpu import list_gpus

                gpus = list_gpus()
                device = "cuda" if gpus else "cpu"
                bf16_supported = gpus[0].bf16_supported if gpus else bf16_supported
        targets = cfg.lora.target_modules
        return cls(
            batch_size=cfg.train.batch_size,
            seq_len=cfg.data.max_length,
            lora_r=cfg.lora.r,
            lora_targets=list(targets) if isinstance(targets, list) else targets,
            quant_type=cfg.quant.quant_type,
            double_quant=cfg.quant.double_quant,
            compute_dtype=resolve_compute_dtype(cfg.quant.compute_dtype, device, bf16_supported),
            optimizer=cfg.train.optimizer,
            gradient_checkpointing=cfg.train.gradient_checkpointing,
            device=device,
            use_dora=cfg.lora.use_dora,
            lora_dropout=float(cfg.lora.dropout),
            loss_impl=cfg.train.loss_impl,
            loss_chunk_tokens=cfg.train.loss_chunk_tokens,
            full_recipe=cfg.train.full_recipe,
            packing=cfg.data.packing,
            max_tokens_per_batch=cfg.data.max_tokens_per_batch,
        )

    @property
    def packed(self) -> bool:
        """Whether a batch is one padding-free sequence (auto assumed to pack)."""
        return self.packing in ("auto", "padding_free")

    @property
    def tokens(self) -> int:
        """Tokens the heaviest batch computes: batch x seq_len, capped by the token budget in
        the packed modes (by_length and padding_free plan their batches under it)."""
        tokens = self.batch_size * self.seq_len
        if self.packing != "off" and self.max_tokens_per_batch > 0:
            tokens = min(tokens, self.max_tokens_per_batch)
        return tokens

    @property
    def mask_elements(self) -> int:
        """Entries of one attention mask: (1, T, T) for one packed sequence of T tokens, else
        (b, s, s) with the padded rows' width."""
        if self.packed:
            return self.tokens * self.tokens
        return self.tokens * self.seq_len

    @property
    def dtype(self) -> Dtype:
        """The compute dtype, "auto" resolved as training resolves it (bf16 assumed on cuda)."""
        return resolve_compute_dtype(self.compute_dtype, self.device)


def bits_per_quantized_param(double_quant: bool, blocksize: int = QUANT_BLOCKSIZE) -> float:
    """Storage of one 4-bit quantized weight in bits: 4 + absmax. Without double quant one fp32
    absmax per block (4 + 32/64 = 4.5); with it one uint8 absmax per block plus one fp32 per
    256 blocks (4 + 8/64 + 32/(64*256) = 4.127)."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * NESTED_BLOCKSIZE)
    return 4 + 32 / blocksize


@dataclass(frozen=True)
class Precision:
    """Bytes per value of each kind of tensor, for one method on one device."""

    base: float  # a frozen or master weight
    act: int  # a matmul output (the autocast dtype where autocast is on)
    residual: int  # the residual stream between layers (what checkpointing keeps)
    adapter: int  # the LoRA path's saved input (fp32 adapters; 16-bit under autocast)
    logits: int
    autocast: bool
    frozen: int = 0  # QLoRA's non-quantized layers: embeddings, norms, lm_head, biases


def step_in_backward(settings: Settings, method: Method) -> bool:
    """Whether ``method`` runs the lean full recipe: the optimizer step in backward, one
    gradient alive at a time, no autocast, no gradient accumulation (any device)."""
    return method == "full" and settings.full_recipe == "lean"


def lean_full(settings: Settings) -> bool:
    """Whether full fine-tuning keeps bf16 weights (no fp32 master copy): the rule training
    loads the weights by (``full_weights_dtype``), lean recipe on a GPU with bf16 compute."""
    return full_weights_dtype(settings.full_recipe, settings.dtype, settings.device) == "bf16"


def precision(settings: Settings, method: Method) -> Precision:
    """The bytes per value of each kind of tensor ``method`` keeps on ``settings.device``."""
    compute = DTYPE_BYTES[settings.dtype]
    gpu = settings.device == "cuda"
    if step_in_backward(settings, method):  # no autocast: compute in the weights' dtype
        weight = 2 if lean_full(settings) else 4
        return Precision(weight, weight, weight, 0, weight, False)
    # the Trainer runs a GPU under autocast in the compute dtype (QLoRA included); the CPU never
    autocast = gpu and compute == 2
    act = 2 if autocast else compute
    if method == "full":
        return Precision(4, act, 4, 0, act, autocast)
    if method == "lora":
        return Precision(compute, act, compute, 2 if autocast else 4, act, autocast)
    bits = bits_per_quantized_param(settings.double_quant)
    # a GPU keeps embeddings, norms and lm_head in the compute dtype: 16-bit stream and logits;
    # the CPU computes in fp32
    frozen = compute if gpu else 4
    adapter = 2 if autocast else 4  # autocast saves the adapters' inputs in 16-bit
    return Precision(bits / 8, compute, frozen, adapter, frozen, autocast, frozen)
