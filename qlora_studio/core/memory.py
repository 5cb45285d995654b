"""How much memory a run needs before it runs: full, LoRA and QLoRA side by side.

Pure arithmetic over a :class:`~qlora_studio.core.models.ModelInfo` (exact parameter counts and
linear-layer shapes from the config) and the run :class:`Settings`, priced by the precision rules
of ``core/memory_settings.py``; this module never imports torch. Each method's estimate is a
list of named :class:`MemoryTerm` whose ``detail`` says how it was computed. The terms are
summed, which is a deliberate upper bound: gradients grow during the backward pass while
activations are freed, and both are counted in full.

What each method really builds (``core/training.py``, DESIGN.md "Memory-lean recipe") and where
the figures come from:

- full, ``train.full_recipe: lean``: the optimizer steps each parameter in backward and frees
  its gradient (``core/optimizer_in_backward.py``), so only one gradient is alive at a time; no
  autocast. The weights are bf16 with no fp32 master copy on a GPU with bf16, else fp32 (the
  CPU trains fp32).
- full, ``mixed``: fp32 master weights, fp32 gradients, optimizer states for every parameter; on
  a GPU the Trainer adds bf16/fp16 autocast, whose cast cache keeps a 16-bit copy of every
  linear weight until the forward pass ends (saved for the backward pass).
- lora: the frozen base in the compute dtype (bf16 on a GPU, fp32 on the CPU) plus peft adapters
  kept in fp32; autocast on the GPU.
- qlora: bitsandbytes ``Linear4bit`` for every linear except the output layer. ``quantize_4bit``
  packs two 4-bit values per byte with an fp32 absmax per 64-value block (0.5 bit/param); with
  double quantization the absmax is itself quantized to 8 bits in blocks of 256 with one fp32
  absmax per block (8/64 + 32/(64*256) = 0.127 bit/param; the 256-entry code table is shared).
  On a GPU the embeddings, norms and lm_head stay in the 16-bit compute dtype, so the residual
  stream and the logits are 16-bit; on the CPU everything computes in fp32. ``MatMul4Bit``
  saves only the packed weight for backward: the frozen base linears keep no activations, only
  the LoRA path does.
- loss (``core/lean_loss.py``): chunked, the lm_head runs ``train.loss_chunk_tokens`` trained
  tokens at a time and recomputes them in backward; liger's fused kernel sizes its chunks so
  their logits are about as large as the hidden states; ``full_logits`` keeps the whole batch's
  logits. The estimate assumes every position is trained (completion-only data trains fewer).
- optimizer: bitsandbytes 8-bit blockwise Adam keeps two uint8 states per value plus an fp32
  absmax per 256-value block for each state; tensors under 4,096 values keep 32-bit states.
  Paged optimizers keep the state buffers of tensors of 100,000+ values in unified memory,
  which pages out to CPU RAM when the GPU is short: they are shown apart, as CPU RAM
  (``MethodEstimate.cpu_terms``), and the GPU keeps the absmax, the small tensors' states and
  the largest tensor's states paged in for its step.
- activations: Korthikanti et al. (2022) count the tensors each layer saves for backward; with
  SDPA the ``5*a*s`` attention-score term is gone. The count here is explicit per tensor (see
  :func:`_layer_bytes_per_token`) and is to be calibrated against the "Verify fit" probe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qlora_studio.config import ADAM_OPTIMIZERS, EIGHT_BIT_OPTIMIZERS, METHODS, Method
from qlora_studio.core.events import format_gb
from qlora_studio.core.memory_settings import (  # noqa: F401  (Settings is re-exported)
    Precision,
    Settings,
    bits_per_quantized_param,
    precision,
    step_in_backward,
)

if TYPE_CHECKING:
    from qlora_studio.core.models.inspect import LinearLayer, ModelInfo

MB = 1024**2

OPTIM_BLOCKSIZE = 256  # bitsandbytes 8-bit blockwise optimizer states
MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit states for smaller tensors
PAGED_MIN_SIZE = 100_000  # bitsandbytes pages only state buffers of this many values or more
CUDA_CONTEXT_BYTES = 400 * MB
# measured here: RSS after importing torch, transformers, peft and bitsandbytes was 0.43 GiB
FRAMEWORK_BASELINE_BYTES = 440 * MB
# measured here: loading Gemma 3's fast tokenizer (262,144 entries) added 0.31 GiB of RSS
TOKENIZER_BYTES_PER_ENTRY = 1200
SLACK = {"cuda": 0.10, "cpu": 0.05}
# Linears whose input is the same tensor: without autocast they save it once between them.
_SHARED_INPUTS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})
_GATED_LEAVES = {"gate_proj", "gate_up_proj", "w1", "w3"}


@dataclass
class MemoryTerm:
    """One named part of the memory a run needs."""

    name: str  # e.g. "weights", "optimizer states", "activations"
    bytes: int
    detail: str  # one line: how it was computed


@dataclass
class MethodEstimate:
    """The memory one method needs, term by term."""

    method: Method  # full | lora | qlora
    terms: list[MemoryTerm]
    total_bytes: int  # GPU memory (or process memory on the CPU): the sum of ``terms``
    trainable_params: int
    dominant: str  # name of the largest term
    # held in CPU RAM, not counted in total_bytes (paged optimizer states on a GPU)
    cpu_terms: list[MemoryTerm] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (terms become dicts)."""
        return dataclasses.asdict(self)

    def term(self, name: str) -> MemoryTerm | None:
        """The term called ``name``, or None when this method has no such term."""
        return next((t for t in self.terms if t.name == name), None)


# ---- building blocks ---------------------------------------------------------------------
def targeted_layers(info: ModelInfo, targets: list[str] | str) -> list[LinearLayer]:
    """The linear groups a LoRA ``targets`` setting adapts: every linear except the output layer
    for "all-linear" (as peft does), else those whose leaf name is listed."""
    if isinstance(targets, str):
        if targets != "all-linear":
            targets = [targets]
        else:
            return list(info.linear_layers)
    names = set(targets)
    return [layer for layer in info.linear_layers if layer.name in names]


def lora_trainable_params(info: ModelInfo, r: int, targets: list[str] | str) -> int:
    """LoRA parameters: A (r x in) and B (out x r) for every targeted module, i.e. the sum over
    targeted linear groups of ``count * r * (in + out)``."""
    return sum(
        g.count * r * (g.in_features + g.out_features) for g in targeted_layers(info, targets)
    )


def _dora_params(info: ModelInfo, targets: list[str] | str) -> int:
    """DoRA's magnitude vectors: one value per output feature of each targeted module."""
    return sum(g.count * g.out_features for g in targeted_layers(info, targets))


def _norms_per_layer(info: ModelInfo) -> int:
    """Hidden-sized norm vectors per layer, from the norm parameter count (Llama 2, Gemma 3
    about 5 counting its q/k norms)."""
    layers, hidden = max(info.num_layers, 1), max(info.hidden_size, 1)
    return max(2, round(info.params_by_kind.get("norms", 0) / (layers * hidden)))


def _per_layer(info: ModelInfo, value: float) -> float:
    return value / max(info.num_layers, 1)


def _saved_linear_inputs(info: ModelInfo, groups: list[LinearLayer], copies: bool) -> float:
    """Values per token per layer that ``groups`` save as their inputs (to compute their weight
    gradients). With ``copies`` each linear saves a copy of its own (autocast's cast, LoRA
    dropout's output); without, q/k/v (and gate/up) save the one tensor they share once."""
    if copies:
        return _per_layer(info, sum(g.in_features * g.count for g in groups))
    total = 0.0
    for group in groups:
        if not any(group.name in shared for shared in _SHARED_INPUTS):
            total += group.in_features * group.count
    for shared in _SHARED_INPUTS:
        members = [g.in_features * g.count for g in groups if g.name in shared]
        total += max(members, default=0)
    return _per_layer(info, total)


def _layer_bytes_per_token(info: ModelInfo, settings: Settings, method: Method) -> float:
    """Bytes one decoder layer saves for backward, per token, without checkpointing:

    - norms: each keeps its fp32 input (RMSNorm upcasts); full also keeps the normalized output
      that meets the trainable norm weight;
    - attention: q, k, v after RoPE (k/v repeated to every head: padded batches carry a mask,
      so SDPA gets no native GQA), the attention output, and an fp32 logsumexp per head;
    - MLP: a gated (SwiGLU/GeGLU) MLP keeps the gate output, its activation and the up output
      (3 * I); a plain one keeps the fc1 output (I);
    - full only: the inputs of every trainable linear (o_proj and down_proj included);
    - LoRA / QLoRA only: the input of each targeted module's A, and the r-dim output of A;
      DoRA also keeps an out-sized result. With dropout > 0 every module saves its own dropout
      output and a 1 B mask per value; with dropout 0 peft's dropout is the identity and the
      input arrives in the adapter's dtype already (16-bit stream under autocast, fp32 on the
      CPU), so A saves the tensor itself: modules that share an input (q/k/v, gate/up) save
      it once between them.
    """
    p = precision(settings, method)
    h = info.hidden_size
    qd = (info.num_heads * info.head_dim) or h
    norms = _norms_per_layer(info) * (4 + (p.residual if method == "full" else 0)) * h
    attention = 4 * qd * p.act + 4 * info.num_heads
    gated = any(g.name in _GATED_LEAVES for g in info.linear_layers)
    mlp = (3 if gated else 1) * info.intermediate_size * p.act
    extra = 0.0
    if method == "full":
        extra = _saved_linear_inputs(info, info.linear_layers, p.autocast) * p.act
    else:
        targeted = targeted_layers(info, settings.lora_targets)
        dropout = settings.lora_dropout > 0
        mask = 1 if dropout else 0  # dropout's bool mask, 1 B per saved value
        extra = _saved_linear_inputs(info, targeted, copies=dropout) * (p.adapter + mask)
        for g in targeted:
            per_module = p.adapter * settings.lora_r
            if settings.use_dora:
                per_module += p.adapter * g.out_features
            extra += _per_layer(info, per_module * g.count)
    return norms + attention + mlp + extra


def _tensor_sizes(info: ModelInfo, settings: Settings, method: Method) -> list[tuple[int, int]]:
    """(values per tensor, how many tensors) for every trainable tensor: the optimizer keeps
    state per tensor, and bitsandbytes picks 8 or 32 bits by tensor size."""
    if method != "full":
        r = settings.lora_r
        sizes = []
        for g in targeted_layers(info, settings.lora_targets):
            sizes += [(r * g.in_features, g.count), (g.out_features * r, g.count)]
            if settings.use_dora:
                sizes.append((g.out_features, g.count))
        return sizes
    sizes = [(g.in_features * g.out_features, g.count) for g in info.linear_layers]
    embeddings = info.params_by_kind.get("embeddings", 0)
    lm_head = info.params_by_kind.get("lm_head", 0)
    sizes += [(n, 1) for n in (embeddings, lm_head) if n]
    linear = sum(g.params for g in info.linear_layers)
    rest = info.params_total - linear - embeddings - lm_head
    if rest > 0:  # norms and biases: small vectors, so 32-bit states (1 value each)
        sizes.append((1, rest))
    return sizes


def _state_bytes(optimizer: str, n: int) -> tuple[int, int]:
    """Optimizer state bytes of one tensor of ``n`` values: (exp_avg + exp_avg_sq buffers, fp32
    absmax). 8-bit blockwise Adam: 2 x uint8 per value + 2 fp32 absmax per 256-value block, or
    32-bit states under 4,096 values; 32-bit Adam: 2 x fp32 per value."""
    if optimizer in EIGHT_BIT_OPTIMIZERS and n >= MIN_8BIT_SIZE:
        return 2 * n, 2 * 4 * math.ceil(n / OPTIM_BLOCKSIZE)
    return 8 * n, 0


def _optimizer_terms(
    info: ModelInfo, settings: Settings, method: Method
) -> tuple[MemoryTerm, MemoryTerm | None]:
    """The optimizer states on the GPU (or in the process on the CPU), and the paged state
    buffers that live in CPU RAM (None unless a paged optimizer runs on a GPU)."""
    name, sizes = settings.optimizer, _tensor_sizes(info, settings, method)
    values = sum(n * count for n, count in sizes)
    if name == "sgd":
        return MemoryTerm("optimizer states", 0, "SGD without momentum keeps no state"), None
    if name not in ADAM_OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of sgd, {', '.join(ADAM_OPTIMIZERS)}")
    if name in EIGHT_BIT_OPTIMIZERS:
        small = sum(n * count for n, count in sizes if n < MIN_8BIT_SIZE)
        how = (
            f"Adam 8-bit blockwise: 2 x uint8 + 2 x fp32 absmax per {OPTIM_BLOCKSIZE} values "
            f"({2 + 8 / OPTIM_BLOCKSIZE:.3f} B) x "
            f"{format_count(values - small)} values; tensors under "
            f"{MIN_8BIT_SIZE} values stay 32-bit (8 B) x {format_count(small)} values"
        )
    else:
        how = f"Adam 32-bit: exp_avg + exp_avg_sq, 8 B x {format_count(values)} trainable values"
    paged_on_gpu = name.startswith("paged") and settings.device == "cuda"
    if name.startswith("paged") and not paged_on_gpu:
        how += "; paged is not supported on the CPU (bitsandbytes falls back to plain)"
    # transformers' Trainer gives nn.Embedding weights 32-bit states under an 8-bit optimizer
    # (the lean recipe keeps them 8-bit, core/optimizer_in_backward.py)
    mixed_full = method == "full" and not step_in_backward(settings, method)
    embedding = info.params_by_kind.get("embeddings", 0) if mixed_full else 0
    if embedding and name in EIGHT_BIT_OPTIMIZERS:
        how += f"; the input embeddings keep 32-bit states (8 B x {format_count(embedding)} values)"
    on_gpu, paged, largest = 0.0, 0.0, 0.0
    for n, count in sizes:
        states, absmax = _state_bytes(name, n)
        if embedding and n == embedding and count == 1:
            states, absmax, embedding = 8 * n, 0, 0  # the first such tensor is the embedding
        on_gpu += absmax * count
        if paged_on_gpu and n >= PAGED_MIN_SIZE:
            paged += states * count
            largest = max(largest, states)
        else:
            on_gpu += states * count
    if not paged:
        return MemoryTerm("optimizer states", int(on_gpu), how), None
    detail = (
        f"{how}; the absmax and tensors under {PAGED_MIN_SIZE:,} values stay on the GPU "
        f"({format_gb(on_gpu, 1)}), + the largest tensor's paged states brought in for its step "
        f"({format_gb(largest, 1)})"
    )
    cpu = MemoryTerm(
        "optimizer states (paged)",
        int(paged),
        f"bitsandbytes paged buffers of tensors of {PAGED_MIN_SIZE:,}+ values: unified memory "
        "that pages out to CPU RAM when the GPU is short, so the GPU total leaves them out",
    )
    return MemoryTerm("optimizer states", int(on_gpu + largest), detail), cpu


def _loss_term(info: ModelInfo, settings: Settings, method: Method, p: Precision) -> MemoryTerm:
    """The logits and the cross-entropy (``core/lean_loss.py``), with every position trained
    (the worst case: completion-only data trains fewer):

    - full_logits: the whole batch's logits, their fp32 log-softmax and its gradient;
    - chunked (and auto, which is liger only where liger-kernel is installed on CUDA): one chunk
      of ``loss_chunk_tokens`` trained tokens at a time, recomputed in backward, plus the
      gathered trained hidden states and their gradient;
    - liger (CUDA): chunks of about b*s / ceil(V / h) tokens whose 16-bit logits take the
      gradient in place, plus the gathered hidden states and the input gradient liger computes
      in forward (and, with the lean full recipe, the lm_head's weight gradient).
    """
    tokens, vocab, h = settings.tokens, info.vocab_size, info.hidden_size
    per_value = f"{p.logits} B logits + 4 B fp32 log-softmax + 4 B its gradient"
    impl = settings.loss_impl
    if impl == "full_logits":
        detail = f"full logits: b*s*V = {format_count(tokens * vocab)} x ({per_value})"
        return MemoryTerm("logits and loss", tokens * vocab * (p.logits + 8), detail)
    if impl == "liger" and settings.device == "cuda":
        per_chunk = math.ceil(tokens / math.ceil(vocab / max(h, 1)))
        chunk = min(1 << max(per_chunk - 1, 0).bit_length(), tokens)  # next power of two
        grads = 2 * tokens * h * p.act
        detail = (
            f"liger fused linear cross-entropy: chunks of {chunk:,} tokens x V={vocab:,} x "
            f"{p.act} B logits (gradient in place) + the gathered trained hidden states and "
            f"their gradient (computed in forward) 2 x b*s*h x {p.act} B"
        )
        if step_in_backward(settings, method):
            grads += int(vocab * h * p.base)
            detail += f" + the lm_head weight gradient (V*h x {p.base:g} B) computed in forward"
        return MemoryTerm("logits and loss", chunk * vocab * p.act + grads, detail)
    chunk = min(settings.loss_chunk_tokens, tokens)
    hidden = 2 * tokens * h * p.act
    # lean_loss's cross-entropy keeps one fp32 chunk x V buffer and turns it into its gradient
    # in place; logsumexp's exp(x - max) is a second one while it runs (the 16-bit logits it is
    # cast from are freed by then). Measured on the CPU: 8.4 B per value at 1,024 tokens
    per_chunk_value = 8
    detail = (
        f"chunked: {chunk:,} trained tokens x V={vocab:,} x (4 B fp32 logits + 4 B logsumexp "
        f"temporary; the gradient is made in place), recomputed in backward, + the trained "
        f"hidden states and their gradient 2 x b*s*h x {p.act} B"
    )
    if impl in ("auto", "liger"):
        detail += " (liger's fused kernel, where installed on CUDA, needs less)"
    return MemoryTerm("logits and loss", chunk * vocab * per_chunk_value + hidden, detail)


def format_count(n: float) -> str:
    """A parameter or token count in words people read: 41.9 M, 8.03 B."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


# ---- the estimate ------------------------------------------------------------------------
def estimate_memory(info: ModelInfo, settings: Settings, method: Method) -> MethodEstimate:
    """The peak memory ``method`` needs on ``settings.device``, term by term.

    On cuda the figure is GPU memory (what ``torch.cuda.max_memory_reserved`` plus the CUDA
    context shows); on cpu it is process memory (RSS), so a framework baseline replaces the
    CUDA context. Paged optimizer states on a GPU are listed in ``cpu_terms``, outside the
    total. Raises ValueError for an unknown method, optimizer or compute dtype.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    p = precision(settings, method)
    tokens = settings.tokens
    total = info.params_total
    quantized = sum(g.params for g in info.linear_layers)
    lora = lora_trainable_params(info, settings.lora_r, settings.lora_targets)
    dora = _dora_params(info, settings.lora_targets) if settings.use_dora else 0
    trainable = total if method == "full" else lora + dora
    terms: list[MemoryTerm] = []

    lean = step_in_backward(settings, method)
    if lean:
        how = "bf16, no fp32 master copy" if p.base == 2 else "fp32, stepped in backward"
        detail = f"weights in {how} (lean recipe): {p.base:g} B x {format_count(total)} params"
        terms.append(MemoryTerm("weights", int(p.base * total), detail))
    elif method == "full":
        terms.append(
            MemoryTerm(
                "weights", 4 * total, f"fp32 master weights: 4 B x {format_count(total)} params"
            )
        )
    elif method == "lora":
        dtype = "fp32" if p.base == 4 else "16-bit"
        detail = f"frozen base in {dtype}: {p.base:g} B x {format_count(total)} params"
        terms.append(MemoryTerm("weights", int(p.base * total), detail))
    else:
        bits = bits_per_quantized_param(settings.double_quant)
        detail = (
            f"4-bit {settings.quant_type}, two per byte: 0.5 B x {format_count(quantized)} params"
        )
        terms.append(MemoryTerm("weights", quantized // 2, detail))
        how = (
            "double quant: uint8 absmax per 64 + fp32 per 256 blocks"
            if settings.double_quant
            else "fp32 absmax per 64-value block"
        )
        detail = (
            f"{how}: {bits - 4:.3f} bit x {format_count(quantized)} "
            f"params ({bits:.3f} bits/param in all)"
        )
        terms.append(MemoryTerm("quantization constants", int(quantized * (bits - 4) / 8), detail))
        rest = total - quantized
        how = (
            "kept in the 16-bit compute dtype on the GPU"
            if p.frozen == 2
            else "in fp32 (the CPU computes in fp32)"
        )
        detail = (
            f"embeddings, norms, lm_head, biases {how}: {p.frozen} B x {format_count(rest)} params"
        )
        terms.append(MemoryTerm("16-bit layers", p.frozen * rest, detail))
    if method != "full":
        detail = f"peft adapters in fp32: 4 B x {format_count(lora)} params (r={settings.lora_r})"
        if dora:
            detail += f" + DoRA magnitudes 4 B x {format_count(dora)} params"
        terms.append(MemoryTerm("trainable parameters (LoRA)", 4 * trainable, detail))
    if method == "full" and p.autocast:
        linear = quantized + info.vocab_size * info.hidden_size  # lm_head is a linear too
        detail = "autocast's 16-bit copy of each linear weight (saved for backward): 2 B x "
        detail += f"{format_count(linear)} params"
        terms.append(MemoryTerm("autocast weight copies", 2 * linear, detail))
    if lean:
        largest = max(n for n, _ in _tensor_sizes(info, settings, method))
        detail = (
            f"one at a time: the optimizer steps each parameter in backward and frees its "
            f"gradient; the largest tensor's, {p.base:g} B x {format_count(largest)} values"
        )
        terms.append(MemoryTerm("gradients", int(p.base * largest), detail))
    else:
        detail = f"fp32: 4 B x {format_count(trainable)} trainable params"
        terms.append(MemoryTerm("gradients", 4 * trainable, detail))
    optimizer, paged = _optimizer_terms(info, settings, method)
    terms.append(optimizer)
    terms.append(_activations_term(info, settings, method, p))
    terms.append(_loss_term(info, settings, method, p))
    if method == "qlora" and info.linear_layers:
        widest = max(info.linear_layers, key=lambda g: g.in_features * g.out_features)
        weight = widest.in_features * widest.out_features * p.act
        grad_input = tokens * max(widest.in_features, widest.out_features) * p.act
        detail = (
            f"{widest.name} ({widest.out_features}x{widest.in_features}) dequantized to "
            f"{p.act} B, + a {format_count(tokens)}-token gradient of its wider side in backward"
        )
        terms.append(MemoryTerm("dequantization transient", weight + grad_input, detail))

    allocated = sum(t.bytes for t in terms)
    if settings.device == "cuda":
        terms.append(MemoryTerm("CUDA context", CUDA_CONTEXT_BYTES, "driver, cuBLAS and kernels"))
    else:
        detail = "torch, transformers, peft, bitsandbytes resident in the process (CPU RSS)"
        terms.append(MemoryTerm("framework baseline", FRAMEWORK_BASELINE_BYTES, detail))
        tokenizer = TOKENIZER_BYTES_PER_ENTRY * info.vocab_size
        per_entry = TOKENIZER_BYTES_PER_ENTRY
        detail = f"fast tokenizer in RAM: ~{per_entry} B x {info.vocab_size:,} entries"
        terms.append(MemoryTerm("tokenizer", tokenizer, detail))
    terms.append(slack_term(settings.device, allocated))
    for term in terms:
        term.bytes = int(term.bytes)
    dominant = max(terms, key=lambda t: t.bytes).name
    total_bytes = sum(t.bytes for t in terms)
    return MethodEstimate(method, terms, total_bytes, trainable, dominant, [paged] if paged else [])


def slack_term(device: str, allocated: float) -> MemoryTerm:
    """The allocator's share on top of ``allocated`` bytes of terms: fragmentation and cached
    blocks (CUDA's caching allocator, or glibc's heap on the CPU)."""
    share = SLACK.get(device, SLACK["cuda"])
    detail = f"{share:.0%} of the allocated terms for fragmentation and cached blocks"
    return MemoryTerm("allocator slack", int(share * allocated), detail)


def _activations_term(
    info: ModelInfo, settings: Settings, method: Method, p: Precision
) -> MemoryTerm:
    """Saved activations: every layer's (:func:`_layer_bytes_per_token`) without
    checkpointing; with it, each layer's input (residual stream) plus one layer recomputed in
    backward. Plus the final norm's fp32 input and the attention mask: a bool (b, 1, s, s) mask
    and SDPA's additive copy in the compute dtype per layer call."""
    b, s = settings.batch_size, settings.seq_len
    tokens, layers, h = settings.tokens, info.num_layers, info.hidden_size
    per_layer = _layer_bytes_per_token(info, settings, method)
    mask = settings.mask_elements
    if settings.gradient_checkpointing:
        per_token = layers * p.residual * h + per_layer + 4 * h
        masks = mask * (1 + p.act)
        how = (
            f"checkpointing: {layers} layer inputs x {p.residual * h / 1024:.1f} KiB + one layer "
            f"recomputed ({per_layer / 1024:.1f} KiB) per token"
        )
    else:
        per_token = layers * per_layer + 4 * h
        masks = mask * (1 + layers * p.act)
        how = f"{per_layer / 1024:.1f} KiB per token per layer x {layers} layers"
    if settings.packed:
        shape = f"packed: up to {b} rows of up to {s} in one sequence, mask T x T"
    else:
        shape = f"b={b}, s={s}"
    detail = (
        f"{how} x {format_count(tokens)} tokens ({shape}) + attention masks {format_gb(masks, 1)}"
    )
    return MemoryTerm("activations", int(tokens * per_token + masks), detail)


def estimate_all(info: ModelInfo, settings: Settings) -> dict[str, MethodEstimate]:
    """Estimates for full, lora and qlora at the same settings."""
    return {method: estimate_memory(info, settings, method) for method in METHODS}
