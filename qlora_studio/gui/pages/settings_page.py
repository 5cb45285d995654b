"""Settings: the few that matter (method, adapter rank, learning rate, steps, batch, where runs
are saved) in plain words, every other knob of the run config under "Advanced", each with its
field name and help as a tooltip; presets; "Show YAML" and "Copy CLI command" so any run can be
repeated in a terminal."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QStandardItemModel
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from qlora_studio import config as C
from qlora_studio.core.events import format_gb
from qlora_studio.core.gpu import list_gpus  # stdlib only at import: NVML loads on use
from qlora_studio.gui import theme
from qlora_studio.gui.pages.base import ERROR_COLOUR, Page

if TYPE_CHECKING:
    from qlora_studio.core.gpu import GpuInfo

CHOICES = {
    ("quant", "quant_type"): C.QUANT_TYPES,
    ("quant", "compute_dtype"): C.COMPUTE_DTYPES,
    ("train", "optimizer"): C.OPTIMIZERS,
    ("train", "scheduler"): C.SCHEDULERS,
    ("train", "device"): C.DEVICES,
    ("train", "full_recipe"): C.FULL_RECIPES,
    ("train", "loss_impl"): C.LOSS_IMPLS,
    ("train", "fit"): C.FIT_MODES,
    ("data", "packing"): C.PACKINGS,
    ("distributed", "strategy"): C.STRATEGIES,
}
MEMORY_NOTES = {
    "r": "LoRA memory grows linearly with r: r x (d_in + d_out) fp32 parameters per layer, "
    "plus gradients and optimizer state.",
    "double_quant": "Saves ~0.37 bit per quantized parameter (~0.4 GB on a 7B model).",
    "optimizer": "Adam 32-bit keeps 8 B per trainable parameter, 8-bit ~2 B; paged variants "
    "move state to CPU RAM under pressure.",
    "gradient_checkpointing": "Keeps one hidden state per layer instead of all activations: "
    "the largest saving for long sequences.",
    "batch_size": "Activations and logits grow linearly with the batch.",
    "compute_dtype": "bf16 halves activation memory against fp32; for LoRA it is also the "
    "frozen base's dtype (2 B per parameter instead of 4).",
    "full_recipe": "lean keeps 2 B of bf16 weights per parameter on a GPU and one parameter's "
    "gradient at a time (mixed: 4 B fp32 weights + 4 B gradients each), but gives up clipping "
    "across all parameters and gradient accumulation.",
    "loss_impl": "full_logits keeps batch x length x vocabulary logits in fp32 (GBs with a 128k+ "
    "vocabulary); chunked keeps one chunk of trained tokens x vocabulary at a time.",
    "loss_chunk_tokens": "The loss keeps about 8 B x chunk x vocabulary at once (256 tokens x "
    "128k vocabulary = 0.26 GB): halve it to halve that term.",
    "dropout": "0 lets each adapter save the input it shares with its neighbours (q/k/v, "
    "gate/up) once; above 0 every adapter keeps its own dropped-out copy and a mask.",
    "packing": "padding_free computes only real tokens: a batch is the rows concatenated, so its "
    "activations follow the tokens it holds instead of batch x its longest row. by_length "
    "groups similar lengths to cut padding where packing is not exact for the model.",
    "max_tokens_per_batch": "Caps the tokens one batch computes: activations and the loss "
    "follow it, so it bounds the worst case of packed batches (0 = batch x max_length).",
    "fit": "auto shrinks the micro-batch (raising grad_accum to keep the effective batch) and "
    "turns checkpointing on until the estimate fits the GPU.",
    "processes": "With ddp each process holds the whole run; with fsdp and ZeRO-3 each holds "
    "1/processes of the weights, gradients and optimizer states.",
}
# what each strategy does to one GPU's memory, one line each (the strategy combo's tooltips)
STRATEGY_NOTES = {
    "none": "one GPU holds the whole run",
    "ddp": "every GPU holds the whole run, plus a flat copy of the gradients for averaging",
    "fsdp": "weights, gradients and optimizer states split across the GPUs: a model too big "
    "for one GPU fits on several",
    "deepspeed": "ZeRO-2 splits the optimizer states and gradients; ZeRO-3 the weights too",
}
NO_DEEPSPEED = "install deepspeed to use it"
NO_GPU = "No NVIDIA GPU found (CPU runs can still use ddp with several processes)"
PRESETS = {
    "Fastest": {
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "train": {"gradient_checkpointing": False, "optimizer": "paged_adamw_8bit"},
    },
    "Balanced": {
        "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
        "train": {"gradient_checkpointing": True, "optimizer": "paged_adamw_8bit"},
    },
    "Best quality": {
        "lora": {"r": 64, "alpha": 128, "target_modules": "all-linear", "dropout": 0.05},
        "train": {"gradient_checkpointing": True, "optimizer": "paged_adamw_32bit", "lr": 1e-4},
    },
}
# the quant fields only a 4-bit base (QLoRA) uses; compute_dtype sets every method's precision
FOUR_BIT_FIELDS = ("quant_type", "double_quant")
COMPUTE_DTYPE_ROLE = {
    "full": "full fine-tuning: the autocast dtype (mixed), or bf16 weights (lean, on a GPU)",
    "lora": "LoRA: sets the 16-bit base dtype (the frozen base's weights and matmuls)",
    "qlora": "QLoRA: the dtype the 4-bit weights are dequantized to for each matmul",
}
# the few that matter, in plain words (the field name is in each tooltip); the rest is Advanced
ESSENTIALS = (
    ("lora", "r", "Adapter size (rank)"),
    ("train", "lr", "Learning rate"),
    ("train", "max_steps", "Training steps"),
    ("train", "batch_size", "Examples per step"),
    ("output", "dir", "Save runs in"),
)
ADVANCED_OPEN_KEY = "settings/advanced_open"
# (config section, group title, its fields; None = the section's fields no other group or the
# essentials list), in two columns under Advanced: left, right, left, ...
SECTIONS = (
    ("lora", "LoRA adapter", None),
    ("quant", "Compute dtype and 4-bit base (QLoRA)", None),
    ("train", "Training", None),
    (
        "train",
        "Memory and speed",
        (
            "gradient_checkpointing",
            "fit",
            "loss_impl",
            "loss_chunk_tokens",
            "full_recipe",
            "device",
        ),
    ),
    ("data", "Batching", ("packing", "max_tokens_per_batch")),
    ("output", "Output", None),
    (
        "train",
        "Logging and checkpoints",
        ("logging_steps", "eval_steps", "save_steps", "save_total_limit"),
    ),
    ("distributed", "Several GPUs", ("strategy", "processes", "zero_stage", "config_file")),
)


def _group_fields(section: str, names: tuple[str, ...] | None) -> list[dataclasses.Field]:
    fields = dataclasses.fields(C.SECTIONS[section])
    if names is not None:
        return [f for name in names for f in fields if f.name == name]
    listed = {n for s, _, group in SECTIONS if s == section and group for n in group}
    listed |= {n for s, n, _ in ESSENTIALS if s == section}
    return [f for f in fields if f.name not in listed]


def _field(section: str, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(C.SECTIONS[section]) if f.name == name)


def deepspeed_installed() -> bool:
    """Whether the deepspeed package is there (looked up, not imported: it loads torch)."""
    return importlib.util.find_spec("deepspeed") is not None


def _tooltip(section: str, name: str) -> str:
    """The config field's name (as in the YAML and ``--set``), its help and its memory note."""
    text = f"{section}.{name}: {C.field_help(section, name)}"
    note = MEMORY_NOTES.get(name)
    return f"{text}\n\nMemory: {note}" if note else text


class GpuPicker(QWidget):
    """The GPUs NVML sees as check boxes with their free memory, read and written as
    ``distributed.gpus`` ("all" when every one is checked). With no GPU it says so and gives
    back the config's value untouched."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.boxes: dict[int, QCheckBox] = {}
        self._kept = "all"
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.empty = QLabel(NO_GPU)
        self.empty.setWordWrap(True)
        layout.addWidget(self.empty)

    def set_gpus(self, gpus: list[GpuInfo]) -> None:
        """List ``gpus`` (fresh NVML readings), keeping what was checked."""
        wanted = self.value()
        for box in self.boxes.values():
            self.layout().removeWidget(box)
            box.hide()  # deleted on the next turn of the event loop; gone from sight now
            box.deleteLater()
        self.boxes = {}
        for gpu in gpus:
            free, total = format_gb(gpu.free_bytes, 1), format_gb(gpu.total_bytes, 1)
            box = QCheckBox(f"cuda:{gpu.index}  {gpu.name}: {free} free of {total}")
            box.toggled.connect(lambda _=False: self.changed.emit())
            self.layout().addWidget(box)
            self.boxes[gpu.index] = box
        self.empty.setVisible(not gpus)
        self.set_value(wanted)

    def set_value(self, text: str) -> None:
        self._kept = text
        every = text.strip() == "all"
        indices = {int(p) for p in text.split(",") if p.strip().isdigit()}
        for index, box in self.boxes.items():
            box.blockSignals(True)
            box.setChecked(every or index in indices)
            box.blockSignals(False)

    def checked(self) -> list[int]:
        return [index for index, box in self.boxes.items() if box.isChecked()]

    def value(self) -> str:
        if not self.boxes:
            return self._kept
        checked = self.checked()
        return "all" if len(checked) == len(self.boxes) else ",".join(map(str, checked))


class SettingsPage(Page):
    title = "Settings"

    def __init__(self, state, parent=None, read_gpus: Callable[[], list[GpuInfo]] | None = None):
        super().__init__(state, parent)
        self._loading = False
        self.editors: dict[tuple[str, str], QWidget] = {}
        self.read_gpus = read_gpus or list_gpus  # NVML's GPUs; a test passes its own

        self.layout_.addWidget(self._essentials())
        self.message = QLabel("")  # a validation error, under the fields most edited
        self.message.setWordWrap(True)
        self.layout_.addWidget(self.message)
        self._add_presets_row()
        self._add_advanced()
        self._add_several_gpus()
        self.layout_.addStretch(1)

    def _essentials(self) -> QGroupBox:
        """The few that matter: method, rank, learning rate, steps, batch, runs folder."""
        essentials = QGroupBox("The few that matter")
        essentials.setObjectName("essentials")
        form = QFormLayout(essentials)
        methods = QHBoxLayout()
        self.method_group = QButtonGroup(self)
        self.method_buttons = {}
        for method in C.METHODS:
            button = QRadioButton(C.METHOD_LABELS[method])
            button.setToolTip(f"method: {C.METHOD_SUMMARIES[method]}")
            self.method_group.addButton(button)
            self.method_buttons[method] = button
            methods.addWidget(button)
            button.toggled.connect(self._on_edit)
        methods.addStretch(1)
        form.addRow("Method", methods)
        for section, name, label in ESSENTIALS:
            editor = self._editor(section, _field(section, name))
            self.editors[(section, name)] = editor
            if (section, name) == ("output", "dir"):
                self.runs_dir_button = QPushButton("Choose…")
                theme.set_icon(self.runs_dir_button, "mdi6.folder-open-outline")
                self.runs_dir_button.setToolTip("Choose the folder new runs are saved in")
                self.runs_dir_button.clicked.connect(self._choose_runs_dir)
                row = QHBoxLayout()
                row.addWidget(editor, 1)
                row.addWidget(self.runs_dir_button)
                form.addRow(label, row)
            else:
                editor.setMaximumWidth(160)
                form.addRow(label, editor)
        steps = self.editors[("train", "max_steps")]
        assert isinstance(steps, QSpinBox)
        steps.setSpecialValueText("by epochs")  # 0 steps: train.epochs decides (Advanced)
        return essentials

    def _add_presets_row(self) -> None:
        presets = QHBoxLayout()
        presets.addWidget(QLabel("Presets:"))
        for name in PRESETS:
            button = QPushButton(name)
            button.clicked.connect(lambda _=False, n=name: self.apply_preset(n))
            presets.addWidget(button)
        presets.addStretch(1)
        self.yaml_button = QPushButton("Show YAML")
        self.copy_button = QPushButton("Copy CLI command")
        theme.set_icon(self.yaml_button, "mdi6.code-braces")
        theme.set_icon(self.copy_button, "mdi6.content-copy")
        self.yaml_button.clicked.connect(self.show_yaml)
        self.copy_button.clicked.connect(self.copy_command)
        presets.addWidget(self.yaml_button)
        presets.addWidget(self.copy_button)
        self.layout_.addLayout(presets)

    def _add_advanced(self) -> None:
        """Every other field, grouped in two columns behind a toggle remembered across
        launches."""
        self.advanced_button = QToolButton()
        self.advanced_button.setObjectName("advancedToggle")
        self.advanced_button.setText(
            "Advanced: LoRA, 4-bit base, optimizer, memory, batching, several GPUs, logging"
        )
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.setAutoRaise(True)
        self.advanced_button.toggled.connect(self._show_advanced)
        self.layout_.addWidget(self.advanced_button)

        self.advanced = QWidget()
        self.advanced.setObjectName("advancedSettings")
        grid = QHBoxLayout(self.advanced)
        grid.setContentsMargins(0, 0, 0, 0)
        left, right = QVBoxLayout(), QVBoxLayout()
        self.groups: dict[str, QGroupBox] = {}
        for i, (section, label, names) in enumerate(SECTIONS):
            box = QGroupBox(label)
            form = QFormLayout(box)
            for f in _group_fields(section, names):
                editor = self._editor(section, f)
                form.addRow(f.name.replace("_", " "), editor)
                self.editors[(section, f.name)] = editor
            self.groups.setdefault(section, box)  # the section's first group
            (left if i % 2 == 0 else right).addWidget(box)
        left.addStretch(1)
        right.addStretch(1)
        grid.addLayout(left, 1)
        grid.addLayout(right, 1)
        self.layout_.addWidget(self.advanced)
        opened = self.state.settings.value(ADVANCED_OPEN_KEY, False, type=bool)
        self.advanced_button.setChecked(bool(opened))
        self._show_advanced(bool(opened))

    def _add_several_gpus(self) -> None:
        """The Several GPUs group's own parts: one tooltip per strategy, deepspeed only when
        installed, sensible ranges, and the GPU picker for distributed.gpus."""
        strategy = self.editors[("distributed", "strategy")]
        assert isinstance(strategy, QComboBox)
        has_deepspeed = deepspeed_installed()
        items = strategy.model()
        assert isinstance(items, QStandardItemModel)
        for i, name in enumerate(C.STRATEGIES):
            note = STRATEGY_NOTES[name]
            if name == "deepspeed" and not has_deepspeed:
                note = f"{NO_DEEPSPEED} ({note})"
                items.item(i).setEnabled(False)
            strategy.setItemData(i, f"{name}: {note}", Qt.ItemDataRole.ToolTipRole)
        notes = "\n".join(f"{name}: {note}" for name, note in STRATEGY_NOTES.items())
        strategy.setToolTip(f"{_tooltip('distributed', 'strategy')}\n\nMemory:\n{notes}")
        strategy.currentTextChanged.connect(self._on_strategy)
        processes = self.editors[("distributed", "processes")]
        zero_stage = self.editors[("distributed", "zero_stage")]
        assert isinstance(processes, QSpinBox) and isinstance(zero_stage, QSpinBox)
        for spin, lowest, highest in ((processes, 1, 64), (zero_stage, 2, 3)):
            spin.blockSignals(True)  # the range moves the value: no edit before a config loads
            spin.setRange(lowest, highest)
            spin.blockSignals(False)
        self.gpu_picker = GpuPicker()
        self.gpu_picker.setToolTip(_tooltip("distributed", "gpus"))
        self.gpu_picker.set_gpus(self.read_gpus())
        self.gpu_picker.changed.connect(self._on_gpus_picked)
        form = self.groups["distributed"].layout()
        assert isinstance(form, QFormLayout)
        form.insertRow(2, "GPUs", self.gpu_picker)  # under processes
        self._show_for_strategy()

    def _show_for_strategy(self) -> None:
        """Processes and GPUs only with several processes; zero stage and the JSON config only
        for deepspeed."""
        strategy = self._read("distributed", "strategy")
        form = self.groups["distributed"].layout()
        assert isinstance(form, QFormLayout)
        form.setRowVisible(self.editors[("distributed", "processes")], strategy != "none")
        form.setRowVisible(self.gpu_picker, strategy != "none")
        for name in ("zero_stage", "config_file"):
            form.setRowVisible(self.editors[("distributed", name)], strategy == "deepspeed")

    def _on_strategy(self, strategy: str) -> None:
        """One process for none; for the others one per checked GPU (at least two)."""
        if self._loading:
            return
        processes = self.editors[("distributed", "processes")]
        assert isinstance(processes, QSpinBox)
        if strategy == "none":
            processes.setValue(1)
        elif processes.value() < 2:
            processes.setValue(max(2, len(self.gpu_picker.checked())))

    def _on_gpus_picked(self) -> None:
        """One process per checked GPU, then the usual validation."""
        checked = len(self.gpu_picker.checked())
        processes = self.editors[("distributed", "processes")]
        assert isinstance(processes, QSpinBox)
        if self._read("distributed", "strategy") != "none" and checked >= 2:
            processes.blockSignals(True)
            processes.setValue(checked)
            processes.blockSignals(False)
        self._on_edit()

    # ---- editors ------------------------------------------------------------------------
    def _editor(self, section: str, f: dataclasses.Field) -> QWidget:
        default = C.SECTIONS[section]().__getattribute__(f.name)
        key = (section, f.name)
        if key in CHOICES:
            editor = QComboBox()
            editor.addItems(list(CHOICES[key]))
            editor.currentTextChanged.connect(self._on_edit)
        elif isinstance(default, bool):
            editor = QCheckBox()
            editor.toggled.connect(self._on_edit)
        elif isinstance(default, int):
            editor = QSpinBox()
            editor.setRange(0, 10_000_000)
            editor.valueChanged.connect(self._on_edit)
        elif isinstance(default, float):
            editor = QDoubleSpinBox()
            editor.setDecimals(6 if f.name in ("lr", "weight_decay") else 3)
            editor.setRange(0.0, 1000.0)
            editor.setSingleStep(1e-5 if f.name == "lr" else 0.05)
            editor.valueChanged.connect(self._on_edit)
        else:
            editor = QLineEdit()
            editor.editingFinished.connect(self._on_edit)
        editor.setToolTip(_tooltip(section, f.name))
        return editor

    def _read(self, section: str, name: str) -> Any:
        editor = self.editors[(section, name)]
        if isinstance(editor, QComboBox):
            return editor.currentText()
        if isinstance(editor, QCheckBox):
            return editor.isChecked()
        if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
            return editor.value()
        text = editor.text().strip()
        if name == "target_modules" and text != "all-linear":
            return [t.strip() for t in text.split(",") if t.strip()]
        return text

    def _write(self, section: str, name: str, value: Any) -> None:
        editor = self.editors[(section, name)]
        if isinstance(editor, QComboBox):
            editor.setCurrentText(str(value))
        elif isinstance(editor, QCheckBox):
            editor.setChecked(bool(value))
        elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
            editor.setValue(value)
        else:
            editor.setText(", ".join(value) if isinstance(value, list) else str(value))

    # ---- Page contract ------------------------------------------------------------------
    def load_config(self, cfg) -> None:
        self._loading = True
        try:
            self.method_buttons[cfg.method].setChecked(True)
            for section, name in self.editors:
                self._write(section, name, getattr(getattr(cfg, section), name))
            self.gpu_picker.set_gpus(self.read_gpus())  # fresh free memory each time it shows
            self.gpu_picker.set_value(cfg.distributed.gpus)
            self._enable_for(cfg.method)
            self._show_for_strategy()
        finally:
            self._loading = False

    def apply_config(self, cfg) -> None:
        cfg.method = self.current_method()
        for section, name in self.editors:
            setattr(getattr(cfg, section), name, self._read(section, name))
        cfg.distributed.gpus = self.gpu_picker.value()

    def _enable_for(self, method: str) -> None:
        """Enable what ``method`` uses: the LoRA group but for full fine-tuning, the 4-bit
        knobs for QLoRA only; compute_dtype always (for LoRA it is the base's dtype)."""
        self.groups["lora"].setEnabled(method != "full")
        self.editors[("lora", "r")].setEnabled(method != "full")
        for name in FOUR_BIT_FIELDS:
            self.editors[("quant", name)].setEnabled(method == "qlora")
        compute = self.editors[("quant", "compute_dtype")]
        compute.setToolTip(f"{_tooltip('quant', 'compute_dtype')}\n\n{COMPUTE_DTYPE_ROLE[method]}")

    def current_method(self) -> str:
        return next(m for m, b in self.method_buttons.items() if b.isChecked())

    def is_complete(self) -> bool:
        return not self.validation_error()

    def validation_error(self) -> str:
        trial = C.RunConfig.from_dict(self.state.cfg.to_dict())
        try:
            self.apply_config(trial)
            trial.validate()
        except (C.ConfigError, TypeError, ValueError) as exc:
            return str(exc)
        return ""

    def _on_edit(self, *_) -> None:
        if self._loading:
            return
        self._enable_for(self.current_method())
        self._show_for_strategy()
        problem = self.validation_error()
        self.message.setText(
            f"<span style='color:{ERROR_COLOUR}'>{problem}</span>" if problem else ""
        )
        if not problem:
            self._remember_runs_dir()
            self.changed.emit()

    def _remember_runs_dir(self) -> None:
        """A runs folder typed or chosen here becomes the app's runs folder (next launches and
        configs that leave output.dir at its default use it too)."""
        text = self._read("output", "dir")
        if isinstance(text, str) and text and Path(text).expanduser().is_absolute():
            if Path(text).expanduser() != self.state.runs_dir():
                self.state.set_runs_dir(text)

    def _choose_runs_dir(self) -> None:
        start = self._read("output", "dir") or str(self.state.runs_dir())
        folder = QFileDialog.getExistingDirectory(self, "Save runs in", start)
        if folder:
            self.set_runs_dir(folder)

    def set_runs_dir(self, folder: str | Path) -> None:
        """Save new runs in ``folder`` (what "Choose…" does once a folder is picked)."""
        self._write("output", "dir", str(Path(folder).expanduser()))
        self._on_edit()

    def _show_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_button.setArrowType(
            Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow
        )
        self.state.settings.setValue(ADVANCED_OPEN_KEY, shown)

    # ---- actions --------------------------------------------------------------------------
    def apply_preset(self, name: str) -> None:
        for section, values in PRESETS[name].items():
            for field_name, value in values.items():
                self._write(section, field_name, value)
        self._on_edit()

    def yaml_text(self) -> str:
        trial = C.RunConfig.from_dict(self.state.cfg.to_dict())
        self.apply_config(trial)
        return trial.to_yaml()

    def show_yaml(self) -> None:
        dialog = QDialog(self)
        dialog.setWindowTitle("Run config (YAML)")
        layout = QVBoxLayout(dialog)
        text = QPlainTextEdit(self.yaml_text())
        text.setReadOnly(True)
        layout.addWidget(text)
        dialog.resize(560, 620)
        dialog.show()
        self._yaml_dialog = dialog

    def cli_command(self) -> str:
        """Save the config where the CLI can read it and return the command that runs it."""
        from qlora_studio.resources import user_data_dir

        trial = C.RunConfig.from_dict(self.state.cfg.to_dict())
        self.apply_config(trial)
        path = trial.save(user_data_dir() / "configs" / "current.yaml")
        return f"qlora-studio train {path}"

    def copy_command(self) -> None:
        command = self.cli_command()
        QGuiApplication.clipboard().setText(command)
        self.message.setText(f"Copied: <code>{command}</code>")
