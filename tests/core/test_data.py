"""Training data: every format from every file type, row-precise errors, templates, trained
spans and labels, the prepared split and its statistics, the collator and the inspector.

Real tokenizers from the tiny models (fast BPE, no chat template of their own), no mocks.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from qlora_studio.config import DataConfig
from qlora_studio.core.data.analyse import inspect_data
from qlora_studio.core.data.batching import PaddingCollator
from qlora_studio.core.data.prepare import DatasetStats, prepare_dataset
from qlora_studio.core.data.rows import FORMATS, Example, load_examples
from qlora_studio.core.data.templates import (
    TEMPLATE_NAMES,
    preview_example,
    render_example,
    resolve_chat_template,
    tokenize_example,
)
from qlora_studio.core.errors import DatasetError
from qlora_studio.core.events import CollectingReporter

EOS = "</s>"

# Three rows per format; every row has every column so that all writers keep them.
ROWS = {
    "alpaca": [
        {"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob!", "system": ""},
        {"instruction": "Add two and two", "input": "", "output": "4", "system": ""},
        {"instruction": "Name a colour", "input": "", "output": "blue", "system": "Be brief."},
    ],
    "sharegpt": [
        {
            "conversations": [
                {"from": "human", "value": "Say hi"},
                {"from": "gpt", "value": "Hi Bob!"},
            ]
        },
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Add two and two"},
                {"from": "gpt", "value": "4"},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "Name a colour"},
                {"from": "gpt", "value": "blue"},
                {"from": "human", "value": "Another"},
                {"from": "gpt", "value": "red"},
            ]
        },
    ],
    "messages": [
        {
            "messages": [
                {"role": "user", "content": "Say hi"},
                {"role": "assistant", "content": "Hi Bob!"},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Add two and two"},
                {"role": "assistant", "content": "4"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Name a colour"},
                {"role": "assistant", "content": "blue"},
            ]
        },
    ],
    "prompt_completion": [
        {"prompt": "Say hi", "completion": "Hi Bob!"},
        {"prompt": "Add two and two", "completion": "4"},
        {"prompt": "Name a colour", "completion": "blue"},
    ],
    "text": [
        {"text": "The quick brown fox jumps over the lazy dog."},
        {"text": "Convert the date to ISO format."},
        {"text": "Question: what is two plus two? Answer: four."},
    ],
}
FIRST_MESSAGES = [
    {"role": "user", "content": "Say hi"},
    {"role": "assistant", "content": "Hi Bob!"},
]
FIRST_ALPACA = [
    {"role": "user", "content": "Say hi\n\nto Bob"},
    {"role": "assistant", "content": "Hi Bob!"},
]


def _cell(value):
    return json.dumps(value) if isinstance(value, list) else value


def write_rows(folder: Path, kind: str, rows: list[dict], name: str = "data") -> Path:
    """Write ``rows`` as ``kind`` (jsonl json csv tsv parquet disk) under ``folder``."""
    if kind == "jsonl":
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind == "json":
        path = folder / f"{name}.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind in ("csv", "tsv"):
        path = folder / f"{name}.{kind}"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(
                f, fieldnames=list(rows[0]), delimiter="," if kind == "csv" else "\t"
            )
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind == "disk":
        import datasets

        path = folder / f"{name}_dataset"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        raise ValueError(kind)
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tok(tiny_models):
    """A fresh llama tokenizer each test (tests set chat templates on it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["llama"])


@pytest.fixture
def gemma_tok(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["gemma3"])


def trained_text(text: str, spans) -> str:
    return "".join(text[a:b] for a, b in spans)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv", "parquet", "disk"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_from_every_file_type(tmp_path, fmt, kind):
    path = write_rows(tmp_path, kind, ROWS[fmt])
    loaded = load_examples(str(path))
    assert loaded.format == fmt
    assert loaded.source == str(path)
    assert set(ROWS[fmt][0]) <= set(loaded.columns)
    assert [e.row for e in loaded.examples] == [1, 2, 3]
    assert len(loaded.raw_rows) == 3
    first, last = loaded.examples[0], loaded.examples[2]
    if fmt == "text":
        assert first.messages is None
        assert first.text == ROWS["text"][0]["text"]
        return
    assert first.text is None
    assert first.messages == (FIRST_ALPACA if fmt == "alpaca" else FIRST_MESSAGES)
    if fmt == "alpaca":
        assert last.messages[0] == {"role": "system", "content": "Be brief."}
    if fmt == "sharegpt":
        assert [m["role"] for m in last.messages] == ["user", "assistant"] * 2
        assert loaded.examples[1].messages[0] == {"role": "system", "content": "Be brief."}


def test_jsonl_rows_are_numbered_by_line(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert [e.row for e in load_examples(str(path)).examples] == [1, 3]


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First doc\nstill first.\n\n\nSecond doc.\n  \nThird.\n", encoding="utf-8")
    loaded = load_examples(str(path))
    assert loaded.format == "text"
    assert [e.text for e in loaded.examples] == ["First doc\nstill first.", "Second doc.", "Third."]
    assert loaded.columns == ["text"]


@pytest.mark.parametrize("key", ["data", "train", "rows"])
def test_json_object_holding_the_rows(tmp_path, key):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({key: ROWS["prompt_completion"]}), encoding="utf-8")
    assert load_examples(str(path)).format == "prompt_completion"


def test_folder_with_one_data_file(tmp_path):
    write_rows(tmp_path, "jsonl", ROWS["messages"], name="chats")
    loaded = load_examples(str(tmp_path))
    assert loaded.format == "messages" and len(loaded.examples) == 3


@pytest.mark.parametrize(
    "pair", [("question", "answer"), ("prompt", "response"), ("input", "output")]
)
def test_other_prompt_completion_column_pairs(tmp_path, pair):
    rows = [{pair[0]: "What is two plus two?", pair[1]: "four"}]
    loaded = load_examples(str(write_rows(tmp_path, "jsonl", rows)))
    assert loaded.format == "prompt_completion"
    assert loaded.examples[0].messages == [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "four"},
    ]


def test_sharegpt_role_aliases(tmp_path):
    turns = [
        {"from": "system", "value": "s"},
        {"from": "user", "value": "u1"},
        {"from": "chatgpt", "value": "a1"},
        {"from": "human", "value": "u2"},
        {"from": "bing", "value": "a2"},
        {"from": "Human", "value": "u3"},
        {"from": "assistant", "value": "a3"},
    ]
    loaded = load_examples(str(write_rows(tmp_path, "jsonl", [{"conversations": turns}])))
    roles = [m["role"] for m in loaded.examples[0].messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]


def test_openai_content_parts_are_joined(tmp_path):
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    rows = [
        {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "hi"}]}
    ]
    loaded = load_examples(str(write_rows(tmp_path, "jsonl", rows)))
    assert loaded.examples[0].messages[0]["content"] == "Hello there"


@pytest.mark.parametrize(
    "rows, mapping, fmt",
    [
        (
            [{"q": "Say hi", "a": "Hi Bob!"}],
            {"prompt": "q", "completion": "a"},
            "prompt_completion",
        ),
        ([{"chat": FIRST_MESSAGES}], {"messages": "chat"}, "messages"),
        (
            [
                {
                    "dialog": [
                        {"from": "human", "value": "Say hi"},
                        {"from": "gpt", "value": "Hi Bob!"},
                    ]
                }
            ],
            {"conversations": "dialog"},
            "sharegpt",
        ),
        (
            [{"task": "Say hi", "answer_text": "Hi Bob!"}],
            {"instruction": "task", "output": "answer_text"},
            "alpaca",
        ),
        ([{"body": "Some raw text."}], {"text": "body"}, "text"),
    ],
)
def test_column_mapping(tmp_path, rows, mapping, fmt):
    loaded = load_examples(str(write_rows(tmp_path, "jsonl", rows)), columns=mapping)
    assert loaded.format == fmt
    if fmt == "text":
        assert loaded.examples[0].text == "Some raw text."
    else:
        assert loaded.examples[0].messages == FIRST_MESSAGES


def test_forced_format(tmp_path):
    rows = [{"instruction": "Say hi", "output": "Hi Bob!", "text": "raw"}]
    path = str(write_rows(tmp_path, "jsonl", rows))
    assert load_examples(path).format == "alpaca"
    forced = load_examples(path, format="text")
    assert forced.format == "text" and forced.examples[0].text == "raw"
    with pytest.raises(DatasetError) as err:
        load_examples(path, format="sharegpt")
    assert "data.jsonl" in err.value.message and "instruction" in err.value.message
    assert err.value.hint


def test_system_prompt_added_only_where_missing(tmp_path):
    path = str(write_rows(tmp_path, "jsonl", ROWS["messages"]))
    loaded = load_examples(path, system_prompt="You are terse.")
    first, second = loaded.examples[0].messages, loaded.examples[1].messages
    assert first[0] == {"role": "system", "content": "You are terse."}
    assert second[0] == {"role": "system", "content": "Be brief."}
    assert sum(m["role"] == "system" for m in second) == 1


def test_conversations_in_csv_cells_are_json(tmp_path):
    loaded = load_examples(str(write_rows(tmp_path, "csv", ROWS["messages"])))
    assert loaded.examples[0].messages == FIRST_MESSAGES


# ---------------------------------------------------------------- errors


def _bad_jsonl(tmp_path, name, rows, bad_line, bad):
    lines = [json.dumps(r) for r in rows]
    lines.insert(bad_line - 1, bad if isinstance(bad, str) else json.dumps(bad))
    return write_lines(tmp_path / name, lines)


@pytest.mark.parametrize(
    "make, where, what",
    [
        (
            lambda p: _bad_jsonl(p, "data.jsonl", ROWS["prompt_completion"], 4, '{"prompt": 1'),
            "data.jsonl, line 4",
            "not valid JSON",
        ),
        (
            lambda p: write_rows(
                p,
                "csv",
                ROWS["alpaca"][:2]
                + [{"instruction": "x", "input": "", "output": "  ", "system": ""}],
                name="train",
            ),
            "train.csv, row 3",
            "'output' is empty",
        ),
        (
            lambda p: _bad_jsonl(
                p,
                "chats.jsonl",
                ROWS["messages"],
                4,
                {"messages": [{"role": "user", "content": "hi"}]},
            ),
            "chats.jsonl, line 4",
            "conversation has no assistant turn",
        ),
        (
            lambda p: _bad_jsonl(
                p,
                "share.jsonl",
                ROWS["sharegpt"],
                2,
                {
                    "conversations": [
                        {"from": "wizard", "value": "hi"},
                        {"from": "gpt", "value": "ok"},
                    ]
                },
            ),
            "share.jsonl, line 2",
            "unknown role 'wizard'",
        ),
        (
            lambda p: _bad_jsonl(p, "pc.jsonl", ROWS["prompt_completion"], 2, {"prompt": "only"}),
            "pc.jsonl, line 2",
            "missing column 'completion'",
        ),
        (
            lambda p: _bad_jsonl(
                p,
                "m.jsonl",
                ROWS["messages"],
                3,
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": 5},
                    ]
                },
            ),
            "m.jsonl, line 3",
            "content must be a string",
        ),
        (
            lambda p: _bad_jsonl(
                p,
                "e.jsonl",
                ROWS["messages"],
                1,
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": " "},
                    ]
                },
            ),
            "e.jsonl, line 1",
            "assistant turn is empty",
        ),
        (
            lambda p: _bad_jsonl(p, "arr.jsonl", ROWS["text"], 2, "[1, 2]"),
            "arr.jsonl, line 2",
            "expected a JSON object",
        ),
        (
            lambda p: write_rows(
                p,
                "parquet",
                ROWS["messages"][:1] + [{"messages": [{"role": "user", "content": "hi"}]}],
                name="chat",
            ),
            "chat.parquet, row 2",
            "no assistant turn",
        ),
    ],
)
def test_a_bad_row_names_file_row_and_problem(tmp_path, make, where, what):
    path = make(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_examples(str(path))
    assert where in err.value.message
    assert what in err.value.message
    assert err.value.hint


def test_broken_json_file_names_the_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n{"text": "a"},\n{"text": "b"\n]', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"rows\.json, line 4: not valid JSON"):
        load_examples(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_examples(str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in err.value.message and "not found" in err.value.message
    assert err.value.hint


def test_unknown_extension(tmp_path):
    path = tmp_path / "sheet.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DatasetError) as err:
        load_examples(str(path))
    assert "sheet.xlsx" in err.value.message and ".xlsx" in err.value.message
    assert ".jsonl" in err.value.hint


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_examples(str(path))
    assert "empty.jsonl" in err.value.message and err.value.hint


def test_undetectable_format_lists_columns_and_formats(tmp_path):
    path = write_rows(tmp_path, "jsonl", [{"foo": "x", "bar": "y"}])
    with pytest.raises(DatasetError) as err:
        load_examples(str(path))
    assert "data.jsonl" in err.value.message
    assert "foo" in err.value.message and "bar" in err.value.message
    for fmt in FORMATS:
        assert fmt in err.value.hint
    assert "instruction" in err.value.hint and "completion" in err.value.hint


def test_unknown_forced_format(tmp_path):
    path = write_rows(tmp_path, "jsonl", ROWS["text"])
    with pytest.raises(DatasetError, match="unknown data format"):
        load_examples(str(path), format="yaml")


def test_folder_without_data(tmp_path):
    (tmp_path / "notes.md").write_text("hi", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_examples(str(tmp_path))
    assert "no dataset" in err.value.message and err.value.hint


def test_hub_id_offline_gives_a_clear_error():
    with pytest.raises(DatasetError) as err:
        load_examples("nobody-here/no-such-dataset")
    assert "nobody-here/no-such-dataset" in err.value.message
    assert "offline" in err.value.hint


# ---------------------------------------------------------------- templates


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi"},
    {"role": "assistant", "content": "Hi Bob!"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "Hi again."},
]
END = {
    "gemma": "<end_of_turn>\n",
    "chatml": "<|im_end|>\n",
    "llama3": "<|eot_id|>",
    "alpaca": EOS,
    "plain": EOS,
}
GENERATION = {
    "gemma": "<start_of_turn>model\n",
    "chatml": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "alpaca": "### Response:\n",
    "plain": "Assistant: ",
}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_each_template_renders_and_trains_only_answers(tok, name):
    assert resolve_chat_template(tok, name) == name
    assert isinstance(tok.chat_template, str) and "{%" in tok.chat_template
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(GENERATION[name])
    assert not tok.apply_chat_template(CONVERSATION[:2], tokenize=False).endswith(GENERATION[name])
    text, spans = render_example(Example(1, CONVERSATION, None), tok)
    assert text.endswith(EOS)
    assert "Be brief." in text and "Say hi" in text
    pieces = [text[a:b] for a, b in spans]
    assert pieces[0] == "Hi Bob!" + END[name]
    assert pieces[-1].startswith("Hi again.") and pieces[-1].endswith(EOS)
    assert "Say hi" not in trained_text(text, spans)
    assert "Again" not in trained_text(text, spans)
    all_text, all_spans = render_example(Example(1, CONVERSATION, None), tok, train_on="all")
    assert all_text == text and all_spans == [(0, len(text))]


def test_gemma_folds_system_into_first_user_turn(tok):
    resolve_chat_template(tok, "gemma")
    text = tok.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert text.startswith("<s><start_of_turn>user\nBe brief.\n\nSay hi<end_of_turn>\n")
    assert "system" not in text


def test_auto_template_choice(tok, gemma_tok):
    assert tok.chat_template is None
    assert resolve_chat_template(tok, "auto", model_type="llama") == "plain"
    assert resolve_chat_template(gemma_tok, "auto", model_type="gemma3_text") == "gemma"
    assert "<start_of_turn>" in gemma_tok.chat_template
    # a template put in force earlier keeps its name
    assert resolve_chat_template(tok, "auto") == "plain"


def test_auto_template_from_vocabulary(tiny_models):
    from transformers import AutoTokenizer

    for token, expected in (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3")):
        tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
        tokenizer.add_special_tokens({"additional_special_tokens": [token]})
        assert resolve_chat_template(tokenizer, "auto") == expected


def test_tokenizer_own_custom_and_unknown_templates(tok):
    with pytest.raises(DatasetError) as err:
        resolve_chat_template(tok, "tokenizer")
    assert "chatml" in err.value.hint
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert resolve_chat_template(tok, custom) == "custom"
    assert tok.chat_template == custom
    assert resolve_chat_template(tok, "auto") == "tokenizer"
    assert resolve_chat_template(tok, "tokenizer") == "tokenizer"
    with pytest.raises(DatasetError, match="unknown chat template"):
        resolve_chat_template(tok, "vicuna")


def test_custom_template_without_prefix_property_falls_back_to_locating(tok):
    # no generation prompt support: the prefix rendering does not hold
    resolve_chat_template(
        tok,
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}",
    )
    text, spans = render_example(Example(1, CONVERSATION, None), tok)
    assert [text[a:b] for a, b in spans] == ["Hi Bob!", "Hi again.", EOS]


def test_render_without_template_says_so(tok):
    with pytest.raises(DatasetError, match="no chat template"):
        render_example(Example(1, FIRST_MESSAGES, None), tok)


def test_text_example_is_text_plus_eos_all_trained(tok):
    text, spans = render_example(Example(1, None, "Plain words."), tok)
    assert text == "Plain words." + EOS and spans == [(0, len(text))]


# ---------------------------------------------------------------- tokens and labels


def test_labels_are_minus_100_exactly_on_untrained_tokens(tok):
    resolve_chat_template(tok, "chatml")
    example = Example(1, CONVERSATION, None)
    text, spans = render_example(example, tok)
    out = tokenize_example(example, tok, max_length=512)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert out["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert out["attention_mask"] == [1] * len(out["input_ids"])
    assert out["length"] == len(out["input_ids"]) and out["truncated"] is False
    for token, label, (s, e) in zip(out["input_ids"], out["labels"], offsets, strict=True):
        inside = any(a <= s and e <= b for a, b in spans)
        outside = all(e <= a or s >= b for a, b in spans)
        assert label in (token, -100)
        if inside:
            assert label == token
        if outside:
            assert label == -100
    trained_ids = [
        t for t, label in zip(out["input_ids"], out["labels"], strict=True) if label != -100
    ]
    decoded = tok.decode(trained_ids)
    assert "Hi Bob!" in decoded and "Hi again." in decoded and decoded.endswith(EOS)
    assert "Say hi" not in decoded and "Be brief" not in decoded
    everything = tokenize_example(example, tok, max_length=512, train_on="all")
    assert everything["labels"] == everything["input_ids"]


def test_truncation_keeps_the_start(tok):
    resolve_chat_template(tok, "plain")
    example = Example(3, CONVERSATION, None)
    full = tokenize_example(example, tok, max_length=512)
    cut = tokenize_example(example, tok, max_length=10)
    assert cut["truncated"] and cut["length"] == full["length"] > 10
    assert cut["input_ids"] == full["input_ids"][:10] and len(cut["labels"]) == 10
    sample = preview_example(example, tok, max_length=10)
    assert sample.tokens == full["length"] and sample.trained_tokens == 0
    assert sample.truncated_at is not None and not any(t for _, _, t in sample.spans)


def test_preview_spans_cover_the_text(tok):
    resolve_chat_template(tok, "chatml")
    sample = preview_example(Example(2, CONVERSATION, None), tok, max_length=512)
    assert sample.row == 2 and sample.truncated_at is None
    assert sample.spans[0][0] == 0 and sample.spans[-1][1] == len(sample.text)
    for (_, end, flag), (start, _, next_flag) in zip(sample.spans, sample.spans[1:], strict=False):
        assert end == start and flag != next_flag
    trained = "".join(sample.text[a:b] for a, b, on in sample.spans if on)
    assert trained == "Hi Bob!<|im_end|>\nHi again.<|im_end|>\n" + EOS
    assert 0 < sample.trained_tokens < sample.tokens
    json.dumps(sample.to_dict())


# ---------------------------------------------------------------- preparing


def _many_rows(n: int) -> list[dict]:
    return [
        {"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f"{2 * i}"}
        for i in range(n)
    ]


def test_prepare_splits_deterministically(tmp_path, tok):
    path = write_rows(tmp_path, "jsonl", _many_rows(20))
    cfg = DataConfig(path=str(path), validation_split=0.2, max_length=64)
    reporter = CollectingReporter()
    first = prepare_dataset(cfg, tok, model_type="llama", seed=1, reporter=reporter)
    assert (len(first.train), len(first.eval)) == (16, 4)
    assert first.stats.train_rows == 16 and first.stats.eval_rows == 4 and first.stats.rows == 20
    assert first.template == "plain" and first.format == "prompt_completion"
    assert first.chat_template == tok.chat_template
    assert len(reporter.of_type("status")) == 2
    again = prepare_dataset(cfg, tok, model_type="llama", seed=1)
    assert [r["input_ids"] for r in again.eval] == [r["input_ids"] for r in first.eval]
    other = prepare_dataset(cfg, tok, model_type="llama", seed=2)
    assert [r["input_ids"] for r in other.eval] != [r["input_ids"] for r in first.eval]
    assert sorted(map(str, first.train + first.eval)) == sorted(map(str, other.train + other.eval))


@pytest.mark.parametrize(
    "rows, split, expected",
    [(2, 0.1, (1, 1)), (1, 0.5, (1, 0)), (5, 0.0, (5, 0)), (3, 0.9, (1, 2))],
)
def test_split_keeps_a_row_on_each_side(tmp_path, tok, rows, split, expected):
    cfg = DataConfig(
        path=str(write_rows(tmp_path, "jsonl", _many_rows(rows))), validation_split=split
    )
    prepared = prepare_dataset(cfg, tok)
    assert (len(prepared.train), len(prepared.eval)) == expected


def test_eval_path_overrides_split(tmp_path, tok):
    train = write_rows(tmp_path, "jsonl", _many_rows(6), name="train")
    held = write_rows(tmp_path, "csv", [{"question": "Q?", "answer": "A."}] * 2, name="held")
    cfg = DataConfig(path=str(train), eval_path=str(held), validation_split=0.5)
    prepared = prepare_dataset(cfg, tok)
    assert (len(prepared.train), len(prepared.eval)) == (6, 2)
    assert prepared.stats.rows == 8 and len(prepared.stats.lengths) == 8


def test_stats_are_consistent(tmp_path, tok):
    rows = _many_rows(12) + [{"prompt": "word " * 80, "completion": "long"}]
    cfg = DataConfig(
        path=str(write_rows(tmp_path, "jsonl", rows)), max_length=48, validation_split=0.25
    )
    stats = prepare_dataset(cfg, tok).stats
    assert isinstance(stats, DatasetStats)
    assert sum(stats.histogram["counts"]) == stats.rows == 13 == len(stats.lengths)
    assert len(stats.histogram["edges"]) == len(stats.histogram["counts"]) + 1
    assert len(stats.histogram["counts"]) <= 20
    assert stats.histogram["edges"][0] <= stats.min_length
    assert stats.histogram["edges"][-1] > stats.max_length_seen
    assert stats.truncated_rows == 1  # the long row: its answer falls past max_length
    assert stats.max_length_seen > 48 and stats.max_length == 48
    assert 0 < stats.trained_share <= 1
    assert stats.trained_tokens < stats.total_tokens <= 13 * 48
    assert stats.min_length <= stats.mean_length <= stats.p95_length <= stats.max_length_seen
    assert stats.train_rows + stats.eval_rows + stats.skipped_rows == stats.rows
    assert stats.skipped_rows == 1
    assert json.loads(json.dumps(stats.to_dict()))["rows"] == 13


def test_nothing_left_to_learn_asks_for_a_longer_max_length(tmp_path, tok):
    rows = [{"prompt": "word " * 40, "completion": "answer"}] * 3
    cfg = DataConfig(path=str(write_rows(tmp_path, "jsonl", rows)), max_length=8)
    with pytest.raises(DatasetError) as err:
        prepare_dataset(cfg, tok)
    assert "data.jsonl" in err.value.message and "max_length" in err.value.hint


def test_text_format_prepares_without_chat_template(tmp_path, tok):
    path = tmp_path / "corpus.txt"
    path.write_text("One document.\n\nAnother document here.\n", encoding="utf-8")
    prepared = prepare_dataset(DataConfig(path=str(path), validation_split=0.0), tok)
    assert prepared.template == "none" and prepared.chat_template is None
    assert prepared.format == "text" and tok.chat_template is None
    assert prepared.stats.trained_share == 1.0
    assert all(r["labels"] == r["input_ids"] for r in prepared.train)


def test_missing_pad_token_becomes_eos(tmp_path, tok, gemma_tok):
    tok.pad_token = None
    assert tok.pad_token is None
    cfg = DataConfig(path=str(write_rows(tmp_path, "jsonl", ROWS["messages"])))
    prepare_dataset(cfg, tok)
    assert tok.pad_token == EOS
    gemma = prepare_dataset(cfg, gemma_tok, model_type="gemma3_text")
    assert gemma.template == "gemma" and "<start_of_turn>" in gemma.chat_template


def test_template_errors_name_the_row(tmp_path, tok):
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    path = write_rows(tmp_path, "jsonl", ROWS["messages"])
    with pytest.raises(DatasetError, match=r"data\.jsonl, line 2: the chat template"):
        prepare_dataset(DataConfig(path=str(path), chat_template=strict), tok)


# ---------------------------------------------------------------- collating and inspecting


def test_padding_collator(tok):
    resolve_chat_template(tok, "plain")
    short = tokenize_example(Example(1, FIRST_MESSAGES, None), tok, max_length=512)
    long = tokenize_example(Example(2, CONVERSATION, None), tok, max_length=512)
    batch = PaddingCollator(tok.pad_token_id)([short, long])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    n, width = len(short["input_ids"]), len(long["input_ids"])
    for key in batch:
        assert tuple(batch[key].shape) == (2, width) and str(batch[key].dtype) == "torch.int64"
    assert batch["input_ids"][0, n:].tolist() == [tok.pad_token_id] * (width - n)
    assert batch["labels"][0, n:].tolist() == [-100] * (width - n)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"][1].tolist() == long["labels"]
    padded = PaddingCollator(tok.pad_token_id, pad_to_multiple_of=8)([short])
    assert padded["input_ids"].shape[1] % 8 == 0 and padded["input_ids"].shape[1] >= n


def test_inspect_without_tokenizer(tmp_path):
    path = write_rows(tmp_path, "parquet", ROWS["alpaca"] * 3)
    info = inspect_data(str(path))
    assert info["format"] == "alpaca" and info["rows"] == 9
    assert len(info["sample_rows"]) == 5 and "instruction" in info["columns"]
    assert "stats" not in info
    json.dumps(info)


def test_inspect_with_tokenizer(tmp_path, tok):
    path = write_rows(tmp_path, "jsonl", ROWS["sharegpt"])
    info = inspect_data(
        str(path), tokenizer=tok, model_type="llama", max_length=64, validation_split=0.34
    )
    assert json.loads(json.dumps(info)) == info
    assert info["template"] == "plain" and info["stats"]["rows"] == 3
    assert info["stats"]["eval_rows"] == 1 and info["stats"]["train_rows"] == 2
    assert info["preview"]["row"] == 1 and info["preview"]["trained_tokens"] > 0
    assert any(on for _, _, on in info["preview"]["spans"])


def test_rows_whose_answer_lies_past_max_length_are_not_trained(tmp_path, tok):
    rows = [{"prompt": "short", "completion": "yes"}] * 6
    rows += [{"prompt": "a very long prompt " * 20, "completion": "no"}] * 6
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    cfg = DataConfig(path=str(path), max_length=24, validation_split=0.0)
    reporter = CollectingReporter()
    prepared = prepare_dataset(cfg, tok, model_type="llama", reporter=reporter)
    assert len(prepared.train) == 6 and prepared.stats.train_rows == 6
    assert all(any(label != -100 for label in r["labels"]) for r in prepared.train)
    assert prepared.stats.truncated_rows == 6
    assert "6 rows skipped" in reporter.events[-1]["message"]
