"""One fine-tuning run, full / LoRA / QLoRA, as a recipe with explicit phases.

setup (model source, tokenizer, dataset, run folder, model) -> train (transformers.Trainer with
an event callback) -> save (adapter or model, summary) -> cleanup. The dataset is checked before
the run folder exists, so bad data never leaves a half-made run behind.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qlora_studio.config import RunConfig
from qlora_studio.core.errors import Cancelled, StudioError, TrainingError
from qlora_studio.core.events import (
    JsonLinesReporter,
    NullReporter,
    Reporter,
    TeeReporter,
    make_event,
)
from qlora_studio.core.models.loading import (
    compute_dtype_name,
    load_causal_lm,
    model_type,
    pick_device,
)
from qlora_studio.core.run_folder import (
    ADAPTER,
    CHECKPOINTS,
    CONFIG_FILE,
    EVENTS_FILE,
    FULL_MODEL,
    SUMMARY_FILE,
    RunFolderLock,
    last_checkpoint,
    make_run_dir,
    tidy_checkpoints,
    write_json_atomic,
)
from qlora_studio.core.training.failures import (
    LastStepKeeper,
    explain_lost_rank,
    explain_training_error,
)
from qlora_studio.core.training.out_of_memory import explain_out_of_memory, is_out_of_memory

if TYPE_CHECKING:
    from qlora_studio.core.data.prepare import PreparedDataset
    from qlora_studio.core.history.recorder import RunRecorder
    from qlora_studio.core.library_logs import LibraryLogs

OPTIMIZER_NAMES = {  # our names -> transformers' OptimizerNames
    "adamw_torch": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "sgd": "sgd",
}


@dataclass
class TrainResult:
    """What a finished (or stopped) run left behind."""

    run_dir: Path
    status: str  # "done" | "cancelled"
    step: int
    total_steps: int
    output_dir: Path  # the adapter folder (lora/qlora) or the model folder (full)
    checkpoint: Path | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    final_loss: float | None = None
    eval_loss: float | None = None
    runtime_s: float = 0.0


class FineTuneRecipe:
    """A fine-tuning run. Use :func:`run_training` unless you need the phases one by one."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        reporter: Reporter | None = None,
        cancel: threading.Event | None = None,
        run_dir: Path | None = None,
        resume: bool = False,
        record_history: bool = True,
    ):
        from qlora_studio.core.training.distributed import current_rank

        self.cfg = cfg.validate()
        # several processes (core/training/distributed.py): only rank 0 writes the run folder
        self.rank = current_rank()
        self.record_history = record_history and self.rank.is_main  # off for the probe
        self.screen = reporter or NullReporter()
        self.reporter: Reporter = self.screen
        self.cancel = cancel or threading.Event()
        self._run_dir: Path | None = Path(run_dir) if run_dir else None
        self.resume = resume
        self._events_file: IO[str] | None = None
        self.recorder: RunRecorder | None = None  # the run's row in the run history
        self.model: Any = None
        self.tokenizer: Any = None
        self._prepared: PreparedDataset | None = None
        self._model_dir: Path | None = None
        self.device = "cpu"
        self._lock: RunFolderLock | None = None  # held from the run folder's start to cleanup
        self.packing = "off"  # the data.packing mode in use, once train() has chosen it
        self._planned = False  # batches planned up front: the Trainer takes one per item
        # the probe: train this many steps, each on the heaviest batch the data can make
        self.worst_case_steps = 0
        self.library_logs: LibraryLogs | None = None  # routes warnings to debug.log meanwhile

    @property
    def run_dir(self) -> Path:
        """The run folder: given, or made when setup opens it."""
        if self._run_dir is None:
            raise TrainingError("the run folder is not open yet", "call setup() first")
        return self._run_dir

    @property
    def model_dir(self) -> Path:
        """The local folder of the base model, once setup has resolved the source."""
        if self._model_dir is None:
            raise TrainingError("the model source is not resolved yet", "call setup() first")
        return self._model_dir

    @property
    def prepared(self) -> PreparedDataset:
        """The tokenized, split dataset, once setup has read it."""
        if self._prepared is None:
            raise TrainingError("the dataset is not prepared yet", "call setup() first")
        return self._prepared

    # ---- phases ---------------------------------------------------------------------------
    def setup(self) -> None:
        from qlora_studio.core.data.prepare import prepare_dataset
        from qlora_studio.core.models.sources import load_tokenizer, require_weights, resolve_model

        cfg = self.cfg
        if self.resume and self.rank.is_main:  # first: a running trainer owns this folder
            self._lock = RunFolderLock(self.run_dir).acquire()
            tidy_checkpoints(self.run_dir, cfg.train.save_total_limit)
        if self.resume:
            _refuse_finished_run(self.run_dir, cfg)
        self.device = pick_device(cfg.train.device)
        if self.device == "cuda" and self.rank.distributed:
            import torch

            torch.cuda.set_device(self.rank.local_rank)  # "cuda" is this rank's GPU from here
        self._status(f"Preparing the model source '{cfg.model.source}'")
        self._model_dir = resolve_model(
            cfg.model.source,
            allow_pickle=cfg.model.allow_pickle,
            trust_remote_code=cfg.model.trust_remote_code,
            reporter=self.reporter,
        )
        self._check_cancel()
        require_weights(self.model_dir)  # before the data is tokenized and a run folder made
        self.tokenizer = load_tokenizer(
            self.model_dir, trust_remote_code=cfg.model.trust_remote_code
        )
        kind = model_type(self.model_dir)
        self._status(f"Reading the dataset {cfg.data.path}")
        self._prepared = prepare_dataset(
            cfg.data,
            self.tokenizer,
            model_type=kind,
            seed=cfg.train.seed,
            reporter=self.reporter,
        )
        stats = self.prepared.stats
        self._status(
            f"Dataset: {stats.train_rows} training / {stats.eval_rows} validation rows, "
            f"format {stats.format}, template {stats.template}, "
            f"{stats.truncated_rows} truncated at {stats.max_length} tokens"
        )
        self._check_cancel()
        from qlora_studio.core.fit import fit_before_loading  # auto-fit, or refuse what cannot fit

        longest = min(stats.max_length, stats.max_length_seen)
        self.cfg = cfg = fit_before_loading(cfg, self.model_dir, self.device, longest, self._status)
        self._open_run_dir()
        self._status(f"Loading the model for {cfg.method} on {self.device}")
        self.model = self._setup_model()
        self._check_cancel()

    def train(self) -> TrainResult:
        from transformers.trainer_callback import PrinterCallback

        from qlora_studio.core.training.callbacks import make_event_callback

        cfg = self.cfg
        collator, train_set, eval_set = self._batching()
        trainer_cls, args = self._training_arguments()
        callback = make_event_callback(self.reporter, self.cancel, self.device, self.run_dir)
        trainer = trainer_cls(
            model=self.model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=collator,
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)  # our events replace its print(logs)
        checkpoint = last_checkpoint(self.run_dir) if self.resume else None
        if self.resume and checkpoint is None:
            self._status("No checkpoint found in the run folder: starting from step 0")
        elif checkpoint is not None:
            self._status(f"Resuming from {checkpoint.name}")
        started = time.time()
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except Exception as exc:  # turn the common failures into a message with a hint
            if is_out_of_memory(exc):
                raise self._after_out_of_memory(trainer, collator) from exc
            if self.rank.distributed:
                raise explain_lost_rank(trainer, exc, self._keeper()) from exc
            raise explain_training_error(exc, callback.step) from exc
        eval_loss = None
        if self.prepared.eval and not callback.cancelled:
            self._status("Evaluating on the validation rows")
            metrics = trainer.evaluate()
            eval_loss = metrics.get("eval_loss")
            if eval_loss is not None:
                self.reporter.emit(
                    make_event(
                        "metrics", step=trainer.state.global_step, eval_loss=float(eval_loss)
                    )
                )
        self.trainer = trainer
        status = "cancelled" if callback.cancelled else "done"
        return TrainResult(
            run_dir=self.run_dir,
            status=status,
            step=int(trainer.state.global_step),
            total_steps=int(trainer.state.max_steps),
            output_dir=self.run_dir / (FULL_MODEL if cfg.method == "full" else ADAPTER),
            checkpoint=last_checkpoint(self.run_dir),
            losses=callback.losses,
            final_loss=callback.losses[-1][1] if callback.losses else None,
            eval_loss=float(eval_loss) if eval_loss is not None else None,
            runtime_s=time.time() - started,
        )

    def _after_out_of_memory(self, trainer, collator) -> StudioError:
        """Free what the failed step held, keep a checkpoint of the last completed step, and
        say which term grew with the batch (core/out_of_memory.py)."""
        import gc

        import torch

        step = int(trainer.state.global_step)
        # the lean full recipe may have stepped some parameters of the failed step already:
        # its weights are then between two steps, so only its last checkpoint is kept
        consistent = getattr(trainer, "optimizer_in_backward", None) is None
        trainer.model.zero_grad(set_to_none=True)  # a partial accumulation of the failed step
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
        checkpoint = self._keeper().keep(trainer, "running out of memory", consistent)
        return explain_out_of_memory(
            self.cfg,
            self.model_dir,
            self.device,
            step=step,
            batch_shape=collator.last_shape,
            widest_before=collator.widest,
            packed=collator.packed,
            checkpoint=checkpoint,
            run_dir=self.run_dir,
        )

    def _keeper(self) -> LastStepKeeper:
        return LastStepKeeper(self.run_dir, self.rank.is_main, self.reporter)

    def save(self, result: TrainResult) -> None:
        from qlora_studio.core.export import save_trained

        if not self.rank.is_main:
            return

        self._status(f"Saving the {'model' if self.cfg.method == 'full' else 'adapter'}")
        save_trained(
            self.model,
            self.tokenizer,
            self.cfg,
            result.output_dir,
            base_model_dir=self.model_dir,
            summary=self._summary(result),
        )
        write_json_atomic(self.run_dir / SUMMARY_FILE, self._summary(result))

    def cleanup(self) -> None:
        self.model = None
        self.trainer = None
        if self.library_logs is not None:
            self.library_logs.close()  # the libraries log to the console again
            self.library_logs = None
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        if self._events_file is not None:
            self._events_file.close()
            self._events_file = None
        if self.recorder is not None:
            self.recorder.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---- builders -------------------------------------------------------------------------
    def _batching(self):
        """The collator and the train and eval datasets for ``data.packing``, checked on the
        loaded model (``core/training/packing.py``); ``core/data/batching.py`` builds them."""
        from qlora_studio.core.data.batching import build_batches
        from qlora_studio.core.training.packing import choose_packing

        cfg = self.cfg
        choice = choose_packing(self.model, cfg.data.packing)
        self.packing = choice.mode
        self.reporter.emit(make_event("status", message=choice.message, packing=choice.mode))
        batches = build_batches(
            self.prepared.train,
            self.prepared.eval,
            choice.mode,
            self.tokenizer.pad_token_id,
            batch_size=cfg.train.batch_size,
            max_tokens=cfg.data.max_tokens_per_batch,
            seed=cfg.train.seed,
            worst_case_steps=self.worst_case_steps,
        )
        self._planned = batches.planned
        return batches.collator, batches.train, batches.eval

    def _open_run_dir(self) -> None:
        if not self.rank.is_main:  # rank 0 made it and writes it; this rank only computes
            return
        if self._run_dir is None:
            self._run_dir = make_run_dir(self.cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = RunFolderLock(self.run_dir).acquire()
        if not self.resume:
            self.cfg.save(self.run_dir / CONFIG_FILE)
        self._events_file = open(self.run_dir / EVENTS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        to_screen_and_file = TeeReporter(self.screen, JsonLinesReporter(self._events_file))
        if not self.record_history:
            self.reporter = to_screen_and_file
        else:
            self.recorder = self._start_recorder(warn=to_screen_and_file)
            # the history first: when the screen (the GUI) sees 'done', the row already says so
            self.reporter = TeeReporter(self.recorder, to_screen_and_file)
        # the run_dir field tells a GUI where the run lives without parsing the message
        self.reporter.emit(
            make_event("status", message=f"Run folder: {self.run_dir}", run_dir=str(self.run_dir))
        )

    def _start_recorder(self, warn: Reporter):
        from qlora_studio.core.history.recorder import RunRecorder

        recorder = RunRecorder(
            self.run_dir,
            self.cfg.to_yaml(),
            method=self.cfg.method,
            model_source=self.cfg.model.source,
            resume=self.resume,
            warn=warn,
        )
        recorder.start()
        return recorder

    @property
    def writes_run_dir(self) -> bool:
        """Whether this recipe opened its run folder for writing (and holds its lock): a
        refused resume must not touch the folder another trainer owns or a finished run."""
        return self._events_file is not None

    def record_outcome(self, status: str, error: str | None = None) -> None:
        """Record an outcome the event stream did not carry (an exception)."""
        if self.recorder is not None:
            self.recorder.finish(status, error=error)

    def _setup_model(self):
        cfg = self.cfg
        method = cfg.method
        from qlora_studio.core.library_logs import DEBUG_LOG, route_library_logs

        # library warnings (bitsandbytes' CPU kernels, paged optimizers) go to the run's
        # debug.log; the few that matter come back as one status line
        self.library_logs = route_library_logs(self.run_dir / DEBUG_LOG, self._status)
        model = load_causal_lm(self.model_dir, cfg, self.device, purpose="train")
        if method == "full":
            return model
        import transformers
        from peft import LoraConfig, get_peft_model

        # peft's prepare_model_for_kbit_training without its fp32 upcast of the frozen layers:
        for param in model.parameters():
            # frozen layers get no updates, so 16-bit storage loses nothing to rounding; HF norms
            # compute their statistics in fp32 and the loss upcasts logits before the softmax
            param.requires_grad_(False)
        for module in model.modules():
            # bitsandbytes repacks 4-bit CPU weights on an eval forward (a mid-run evaluation)
            # into a layout whose matmul has no backward: later steps would lose gradients
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        # under fsdp, FSDP's own activation checkpointing wraps each unit (sharding_arguments)
        if cfg.train.gradient_checkpointing and cfg.distributed.strategy != "fsdp":
            # input grads as before: reentrant checkpointing needs them, non-reentrant ignores them
            model.enable_input_require_grads()
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        # LoRA weights stay fp32 (get_peft_model's autocast_adapter_dtype): small updates to
        # trained 16-bit weights would round away, and the adapters are a tiny share of memory
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            use_rslora=cfg.lora.use_rslora,
            use_dora=cfg.lora.use_dora,
            bias="none",
            task_type="CAUSAL_LM",
        )
        # LoRA A starts random: the same seed gives the same start, whatever ran before it
        transformers.set_seed(cfg.train.seed)
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise TrainingError(
                f"LoRA could not be attached: {exc}",
                "check lora.target_modules against `qlora-studio inspect-model`, or use all-linear",
            ) from exc
        trainable, total = model.get_nb_trainable_parameters()
        self._status(
            f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        )
        return model

    def _training_arguments(self):
        from transformers import Trainer, TrainingArguments

        from qlora_studio.core.training.distributed import sharding_arguments

        cfg = self.cfg
        t = cfg.train
        # lean full fine-tuning steps each parameter in backward (core/optimizer_in_backward.py):
        # its weights are already bf16 (no autocast) and there is no full set of grads to clip
        in_backward = cfg.method == "full" and t.full_recipe == "lean"
        # autocast on a GPU, QLoRA included (as the QLoRA paper trains): the fp32 LoRA weights
        # stay the master copy while their matmuls, and the inputs saved for backward, are
        # 16-bit; the frozen base already computes in the compute dtype
        mixed = {}
        compute = compute_dtype_name(cfg.quant.compute_dtype, self.device)
        if self.device == "cuda" and not in_backward and compute in ("bf16", "fp16"):
            mixed = {compute: True}
        has_eval = bool(self.prepared.eval)
        args = TrainingArguments(
            output_dir=str(self.run_dir / CHECKPOINTS),
            num_train_epochs=float(t.epochs),
            max_steps=t.max_steps if t.max_steps > 0 else -1,
            # planned batches arrive whole, one per Trainer item
            per_device_train_batch_size=1 if self._planned else t.batch_size,
            per_device_eval_batch_size=1 if self._planned else t.batch_size,
            gradient_accumulation_steps=t.grad_accum,
            learning_rate=t.lr,
            lr_scheduler_type=t.scheduler,
            warmup_steps=float(t.warmup_ratio),
            weight_decay=t.weight_decay,
            max_grad_norm=0.0 if in_backward else t.max_grad_norm,
            optim=OPTIMIZER_NAMES[t.optimizer],
            activation_checkpointing=t.gradient_checkpointing
            and cfg.method != "qlora"
            and cfg.distributed.strategy != "fsdp",
            activation_checkpointing_kwargs={"use_reentrant": False},
            seed=t.seed,
            data_seed=t.seed,
            logging_steps=t.logging_steps,
            logging_first_step=True,
            eval_strategy="steps" if has_eval and t.eval_steps > 0 else "no",
            eval_steps=t.eval_steps or None,
            save_strategy="steps",
            save_steps=t.save_steps,
            save_total_limit=t.save_total_limit,
            use_cpu=self.device == "cpu",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            # a packed batch has no attention mask and no padding: every token is a real one
            include_num_input_tokens_seen="all"
            if self.packing == "padding_free"
            else "non_padding",
            dataloader_pin_memory=self.device == "cuda",
            # every LoRA weight gets a gradient each step: DDP need not search for unused ones
            ddp_find_unused_parameters=False if self.rank.distributed else None,
            **mixed,
            **sharding_arguments(cfg, self._layer_classes(), t.gradient_checkpointing),
        )
        from qlora_studio.core.training.lean_loss import choose_loss_path, with_lean_loss

        loss_path = choose_loss_path(self.model, t, self.device)
        self._status(loss_path.message)
        Trainer = with_lean_loss(Trainer, loss_path)  # the class the recipe builds on
        if in_backward:
            from qlora_studio.core.training.optimizer_in_backward import with_optimizer_in_backward

            return with_optimizer_in_backward(Trainer), args
        return Trainer, args

    # ---- helpers --------------------------------------------------------------------------
    def _layer_classes(self) -> list[str]:
        """The decoder layer classes FSDP wraps one unit each (transformers' no-split list)."""
        return list(getattr(self.model, "_no_split_modules", None) or [])

    def _summary(self, result: TrainResult) -> dict[str, Any]:
        from qlora_studio.core.data.templates import stop_tokens

        stats = self.prepared.stats
        return {
            "status": result.status,
            "method": self.cfg.method,
            "model_source": self.cfg.model.source,
            "model_dir": str(self.model_dir),
            "step": result.step,
            "total_steps": result.total_steps,
            "final_loss": result.final_loss,
            "first_loss": result.losses[0][1] if result.losses else None,
            "eval_loss": result.eval_loss,
            "runtime_s": round(result.runtime_s, 1),
            "template": self.prepared.template,
            "chat_template": self.prepared.chat_template,
            "eos_token": self.tokenizer.eos_token,
            "stop_tokens": stop_tokens(self.tokenizer),
            "dataset": self.cfg.data.path,
            "format": stats.format,
            "train_rows": stats.train_rows,
            "packing": self.packing,
            "eval_rows": stats.eval_rows,
            "device": self.device,
            "output_dir": str(result.output_dir),
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        }

    def _status(self, message: str) -> None:
        self.reporter.emit(make_event("status", message=message))

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("Stopped before training started", "nothing was trained")


# ---- errors a user can cause ----------------------------------------------------------------
def _refuse_finished_run(run_dir: Path, cfg: RunConfig) -> None:
    """A finished run resumes only to a larger ``train.max_steps``: resuming it as it is would
    train past its end and change its adapter."""
    summary, state = {}, {}
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is not None:
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    step = int(state.get("global_step") or 0)
    planned = int(state.get("max_steps") or 0)
    finished = summary.get("status") == "done" or (planned > 0 and step >= planned)
    if summary.get("status") == "done":
        step = max(step, int(summary.get("step") or 0))
    wanted = cfg.train.max_steps
    if finished and (wanted <= 0 or wanted <= step):
        raise TrainingError(
            f"{run_dir.name} already finished at step {step}: nothing to resume",
            f"to train it further, resume with --set train.max_steps=N where N > {step}",
        )
