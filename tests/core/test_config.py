"""The run config: defaults, validation naming the field, YAML round trip, overrides."""

import json

import pytest

from qlora_studio.config import ConfigError, RunConfig, field_help


def test_defaults_validate_once_data_path_is_set():
    cfg = RunConfig()
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert err.value.field == "data.path"
    cfg.data.path = "x.jsonl"
    assert cfg.validate() is cfg
    assert cfg.method == "qlora" and cfg.quant.quant_type == "nf4" and cfg.quant.double_quant


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig()
    cfg.data.path = str(tmp_path / "d.jsonl")
    cfg.lora.target_modules = ["q_proj", "v_proj"]
    cfg.train.lr = 1e-4
    path = cfg.save(tmp_path / "run.yaml")
    again = RunConfig.load(path)
    assert again.to_dict() == cfg.to_dict()


def test_json_config_loads(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": "lora", "data": {"path": "a.jsonl"}}))
    assert RunConfig.load(path).method == "lora"


@pytest.mark.parametrize(
    "override, field, allowed",
    [
        ("method=prefix", "run.method", "full, lora, qlora"),
        ("train.optimizer=adam", "train.optimizer", "paged_adamw_8bit"),
        ("quant.quant_type=int4", "quant.quant_type", "nf4, fp4"),
        ("data.format=xml", "data.format", "sharegpt"),
        ("quant.compute_dtype=fp8", "quant.compute_dtype", "bf16"),
    ],
)
def test_bad_choice_names_field_and_allowed_values(override, field, allowed):
    cfg = RunConfig()
    cfg.data.path = "d.jsonl"
    with pytest.raises(ConfigError) as err:
        cfg.with_overrides([override])
    assert err.value.field == field
    assert allowed in err.value.hint


@pytest.mark.parametrize(
    "override, field",
    [
        ("lora.r=0", "lora.r"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.lr=-1", "train.lr"),
        ("data.validation_split=1.5", "data.validation_split"),
        ("data.max_length=2", "data.max_length"),
        ("lora.target_modules=everything", "lora.target_modules"),
        ("lora.dropout=1", "lora.dropout"),
    ],
)
def test_bad_numbers_name_the_field(override, field):
    cfg = RunConfig()
    cfg.data.path = "d.jsonl"
    with pytest.raises(ConfigError) as err:
        cfg.with_overrides([override])
    assert err.value.field == field


def test_overrides_parse_types():
    cfg = RunConfig()
    cfg.data.path = "d.jsonl"
    new = cfg.with_overrides(
        [
            "train.lr=1e-4",
            "train.max_steps=30",
            "quant.double_quant=false",
            "train.epochs=2",
            "lora.target_modules=[q_proj, v_proj]",
            "method=lora",
        ]
    )
    assert new.train.lr == pytest.approx(1e-4) and isinstance(new.train.lr, float)
    assert new.train.max_steps == 30
    assert new.quant.double_quant is False
    assert new.train.epochs == 2.0 and isinstance(new.train.epochs, float)
    assert new.lora.target_modules == ["q_proj", "v_proj"]
    assert new.method == "lora"
    assert cfg.train.max_steps == 0  # the original is untouched


def test_unknown_field_and_section_are_named():
    cfg = RunConfig()
    cfg.data.path = "d.jsonl"
    with pytest.raises(ConfigError) as err:
        cfg.with_overrides(["train.learning_rate=1"])
    assert err.value.field == "train.learning_rate" and "lr" in err.value.hint
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"training": {}})
    assert err.value.field == "training"
    with pytest.raises(ConfigError):
        cfg.with_overrides(["no-equals-sign"])


def test_invalid_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.load(path)


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data.jsonl").write_text("{}\n")
    (tmp_path / "cfg" / "run.yaml").write_text("data:\n  path: data.jsonl\n")
    (tmp_path / "demo").mkdir()  # a folder named like the demo source must not capture it
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.load(tmp_path / "cfg" / "run.yaml")
    assert cfg.data.path == str((tmp_path / "cfg" / "data.jsonl").resolve())
    assert cfg.model.source == "demo"


def test_every_field_has_help():
    import dataclasses

    from qlora_studio.config import SECTIONS

    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert field_help(section, f.name), f"{section}.{f.name} has no help text"


def test_shipped_demo_config_is_valid(repo_root):
    cfg = RunConfig.load(repo_root / "resources" / "configs" / "demo-qlora.yaml")
    assert cfg.method == "qlora" and cfg.model.source == "demo"
    assert cfg.train.optimizer == "paged_adamw_8bit"


# ---- every choice once, as a Literal -----------------------------------------------------
def test_each_choice_tuple_is_its_literal_and_types_the_field():
    import dataclasses
    import typing

    from qlora_studio import config as C

    pairs = {
        C.Method: C.METHODS,
        C.DataFormat: C.DATA_FORMATS,
        C.ChatTemplate: C.CHAT_TEMPLATES,
        C.TrainOn: C.TRAIN_ON,
        C.QuantType: C.QUANT_TYPES,
        C.ComputeDtype: C.COMPUTE_DTYPES,
        C.Optimizer: C.OPTIMIZERS,
        C.Scheduler: C.SCHEDULERS,
        C.Device: C.DEVICES,
        C.LossImpl: C.LOSS_IMPLS,
        C.FullRecipe: C.FULL_RECIPES,
        C.FitMode: C.FIT_MODES,
    }
    for literal, choices in pairs.items():
        assert typing.get_args(literal) == choices
    # every Literal-typed field refuses a value outside its choices, naming the field
    typed = 0
    for section, cls in {"run": C.RunConfig, **C.SECTIONS}.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if typing.get_origin(hint) is not typing.Literal:
                continue
            typed += 1
            assert f.default in typing.get_args(hint), f"{section}.{f.name}"
            data = {"data": {"path": "x.jsonl"}}
            if section == "run":
                data[f.name] = "nonsense"
            else:
                data.setdefault(section, {})[f.name] = "nonsense"
            with pytest.raises(ConfigError) as err:
                RunConfig.from_dict(data)
            assert err.value.field.endswith(f.name)
    assert typed >= 11


def test_labels_and_subsets_are_read_from_the_choices():
    from qlora_studio import config as C
    from qlora_studio.core.data.rows import EXPECTED_COLUMNS, FORMATS
    from qlora_studio.core.data.templates import TEMPLATE_NAMES, TEMPLATES
    from qlora_studio.core.training.recipe import OPTIMIZER_NAMES

    assert tuple(C.METHOD_LABELS) == tuple(C.METHOD_SUMMARIES) == C.METHODS
    assert FORMATS == tuple(EXPECTED_COLUMNS) == tuple(f for f in C.DATA_FORMATS if f != "auto")
    assert TEMPLATE_NAMES == tuple(TEMPLATES) == C.TEMPLATE_NAMES
    assert set(TEMPLATE_NAMES) | {"auto", "tokenizer"} == set(C.CHAT_TEMPLATES)
    assert set(OPTIMIZER_NAMES) == set(C.OPTIMIZERS)
    assert set(C.EIGHT_BIT_OPTIMIZERS) <= set(C.ADAM_OPTIMIZERS) < set(C.OPTIMIZERS)


def test_cli_choices_are_the_config_choices():
    from qlora_studio import config as C
    from qlora_studio.cli import _build_parser

    parser = _build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    options = {a.dest: a.choices for a in sub["inspect-data"]._actions}
    assert tuple(options["format"]) == C.DATA_FORMATS
    assert tuple(options["train_on"]) == C.TRAIN_ON
    method = next(a for a in sub["estimate"]._actions if a.dest == "method")
    assert tuple(method.choices) == (*C.METHODS, "all")


@pytest.mark.parametrize(
    ("requested", "device", "bf16", "expected"),
    [
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp16"),  # a pre-Ampere GPU (T4, V100, RTX 20xx)
        ("auto", "cpu", True, "fp32"),  # bf16 compute on the CPU made the loss climb
        ("auto", "cpu", False, "fp32"),
        ("fp16", "cuda", True, "fp16"),  # an explicit choice is kept
        ("bf16", "cpu", False, "bf16"),
        ("fp32", "cuda", True, "fp32"),
    ],
)
def test_resolve_compute_dtype(requested, device, bf16, expected):
    from qlora_studio.config import resolve_compute_dtype

    assert resolve_compute_dtype(requested, device, bf16) == expected


def test_resolve_compute_dtype_refuses_an_unknown_dtype():
    from qlora_studio.config import resolve_compute_dtype

    with pytest.raises(ConfigError, match="quant.compute_dtype"):
        resolve_compute_dtype("int8", "cuda", True)


def test_training_resolves_compute_dtype_with_the_same_rule():
    from qlora_studio.core.models.loading import compute_dtype_name

    assert compute_dtype_name("auto", "cpu") == "fp32"
    assert compute_dtype_name("fp16", "cpu") == "fp16"
