"""`qlora-studio inspect-model` and `inspect-data`: what a model is made of, and the dataset
check before training."""

from __future__ import annotations

import json

from qlora_studio.cli.common import EXIT_OK, fail, reporter_for


def cmd_inspect_model(args) -> int:
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.models.inspect import inspect_model

    reporter = reporter_for("text")
    try:
        info = inspect_model(
            args.source,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
            reporter=reporter,
        )
    except StudioError as exc:
        return fail(reporter, exc.message, exc.hint)
    data = info.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"{data['architecture']} ({data['model_type']})  from {data['path']}")
    print(f"  parameters     {data['params_total']:,}")
    for kind, count in data["params_by_kind"].items():
        share = 100 * count / max(data["params_total"], 1)
        note = "  (tied to the embeddings)" if kind == "lm_head" and data["tied_embeddings"] else ""
        print(f"    {kind:<12} {count:>15,}  {share:5.1f}%{note}")
    print(
        f"  layers {data['num_layers']}, hidden {data['hidden_size']}, "
        f"intermediate {data['intermediate_size']}, heads {data['num_heads']} "
        f"(kv {data['num_kv_heads']}, head dim {data['head_dim']})"
    )
    print(
        f"  vocabulary {data['vocab_size']:,}, context {data['context_length']:,}, "
        f"tied embeddings {'yes' if data['tied_embeddings'] else 'no'}, "
        f"stored as {data['torch_dtype']}"
    )
    print(f"  chat template  {'yes' if data['has_chat_template'] else 'none (a fallback is used)'}")
    print("  LoRA targets (all-linear):")
    for layer in data["linear_layers"]:
        print(
            f"    {layer['name']:<12} {layer['kind']:<9} x{layer['count']:<3} "
            f"{layer['in_features']} -> {layer['out_features']}"
        )
    return EXIT_OK


def cmd_inspect_data(args) -> int:
    from qlora_studio.core.data.analyse import inspect_data
    from qlora_studio.core.errors import StudioError

    reporter = reporter_for("text")
    columns = {}
    for item in args.columns:
        ours, sep, yours = item.partition("=")
        if not sep:
            return fail(
                reporter, f"--column {item!r} must look like ours=yours", "e.g. prompt=question"
            )
        columns[ours.strip()] = yours.strip()
    try:
        tokenizer, model_type = None, ""
        if args.model:
            from qlora_studio.core.models.sources import load_tokenizer, resolve_model

            folder = resolve_model(
                args.model,
                allow_pickle=args.allow_pickle,
                trust_remote_code=args.trust_remote_code,
                reporter=reporter,
            )
            tokenizer = load_tokenizer(folder, trust_remote_code=args.trust_remote_code)
            model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
        report = inspect_data(
            args.path,
            tokenizer=tokenizer,
            model_type=model_type,
            format=args.format,
            columns=columns or None,
            chat_template=args.chat_template,
            max_length=args.max_length,
            train_on=args.train_on,
            batch_size=args.batch_size,
            max_tokens_per_batch=args.max_tokens_per_batch,
        )
    except StudioError as exc:
        return fail(reporter, exc.message, exc.hint)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return EXIT_OK
    print(f"{report['source']}: {report['rows']} rows, format {report['format']}")
    print(f"  columns: {', '.join(report['columns'])}")
    stats = report.get("stats")
    if stats:
        print(
            f"  template {report['template']}; tokens per row: min {stats['min_length']}, "
            f"mean {stats['mean_length']:.0f}, p95 {stats['p95_length']}, "
            f"max {stats['max_length_seen']}"
        )
        print(
            f"  truncated at {stats['max_length']}: {stats['truncated_rows']} rows; "
            f"trained tokens {stats['trained_tokens']:,} of {stats['total_tokens']:,} "
            f"({100 * stats['trained_share']:.1f}%)"
        )
        batching = report.get("batching")
        if batching:
            print("  " + padding_line(batching))
        _print_histogram(stats["histogram"], stats["max_length"])
        for warning in report.get("warnings", []):
            print(f"  ! warning: {warning}")
        preview = report.get("preview")
        if preview:
            print(f"  row {preview['row']} as trained ([[...]] = tokens with loss):")
            text = "".join(
                f"[[{preview['text'][a:b]}]]" if trained else preview["text"][a:b]
                for a, b, trained in preview["spans"]
            )
            for line in text.splitlines():
                print("    " + line)
    else:
        print("  (pass --model to see token lengths, truncation and the trained tokens)")
        for row in report.get("sample_rows", [])[:3]:
            print("    " + json.dumps(row, ensure_ascii=False)[:160])
    return EXIT_OK


def padding_line(batching: dict) -> str:
    """e.g. "padding at batch 8: off 46% -> by_length 3% -> padding_free 0%"."""
    shares = batching["padding_share"]
    modes = " -> ".join(f"{mode} {100 * share:.0f}%" for mode, share in shares.items())
    return f"padding of the computed tokens at batch {batching['batch_size']}: {modes}"


def _print_histogram(histogram: dict, max_length: int) -> None:
    counts, edges = histogram.get("counts", []), histogram.get("edges", [])
    top = max(counts or [1]) or 1
    for i, count in enumerate(counts):
        lo, hi = edges[i], edges[i + 1] if i + 1 < len(edges) else edges[i]
        mark = "  <- max_length" if lo <= max_length < hi else ""
        print(f"    {lo:>6}-{hi:<6} {'#' * round(30 * count / top):<30} {count}{mark}")
