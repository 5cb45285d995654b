#!/usr/bin/env python3
"""Regenerate the demo date-normalisation datasets shipped in ``resources/datasets/``.

Task: turn a free-form date (written in one of a dozen surface styles, sometimes inside a
short sentence) into an ISO 8601 date ``YYYY-MM-DD``. Answers can be checked exactly.

    python scripts/make_demo_dataset.py

writes ``dates-train.jsonl`` (600 rows) and ``dates-heldout.jsonl`` (100 rows), one JSON
object per line in OpenAI "messages" format. Standard library only; the seed is fixed, so
running it again rewrites the files byte for byte. No held-out date (by ISO value) occurs
in the training file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path

SEED = 20240229
N_TRAIN = 600
N_HELDOUT = 100
FIRST_DAY = dt.date(1950, 1, 1)
LAST_DAY = dt.date(2035, 12, 31)
PREFIX = "Convert to ISO date: "
MAX_WORDS = 40

# How many 29 February dates each split is guaranteed to contain (leap-year coverage).
LEAP_DAYS_TRAIN = 4
LEAP_DAYS_HELDOUT = 2

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
MONTHS_ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEEKDAYS_ABBR = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# Short sentences wrapped around the date in some rows ({d} is the date text).
CONTEXTS = [
    "Meeting moved to {d}, please confirm.",
    "The invoice is due on {d}.",
    "Put {d} in the shared calendar.",
    "Deadline: {d}",
    "We signed the lease on {d}.",
    "Shipped {d}, tracking to follow.",
    "The conference opens {d} in Lisbon.",
    "Last service was on {d}.",
    "Posted on {d} by the admin team.",
    "Please book the flight for {d}.",
    "The contract expires {d}.",
    "Results were published {d}.",
    "Our office reopens on {d}.",
    "Photo taken {d} near the harbour.",
]
CONTEXT_RATE = 0.35


def ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Each style: (name, function(date, rng) -> text, whether it contains month/weekday words
# that may be re-cased).
def s_long_mdy(d, rng):
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def s_long_dmy(d, rng):
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def s_ordinal_of(d, rng):
    lead = rng.choice(["the ", ""])
    comma = rng.choice([",", ""])
    return f"{lead}{ordinal(d.day)} of {MONTHS[d.month - 1]}{comma} {d.year}"


def s_abbr_mdy_ordinal(d, rng):
    dot = "." if rng.random() < 0.3 and d.month != 5 else ""
    return f"{MONTHS_ABBR[d.month - 1]}{dot} {ordinal(d.day)}, {d.year}"


def s_abbr_dmy(d, rng):
    if rng.random() < 0.5:
        return f"{d.day} {MONTHS_ABBR[d.month - 1]} {d.year}"
    return f"{d.day:02d}-{MONTHS_ABBR[d.month - 1]}-{d.year}"


def s_weekday_dmy(d, rng):
    return f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year}"


def s_weekday_abbr_mdy(d, rng):
    return f"{WEEKDAYS_ABBR[d.weekday()]}, {MONTHS_ABBR[d.month - 1]} {d.day}, {d.year}"


def s_month_the_ordinal(d, rng):
    return f"{MONTHS[d.month - 1]} the {ordinal(d.day)}, {d.year}"


def s_us_numeric(d, rng):
    if rng.random() < 0.5:
        return f"{d.month:02d}/{d.day:02d}/{d.year} (US)"
    return f"{d.month}/{d.day}/{d.year} (US)"


def s_uk_numeric(d, rng):
    if rng.random() < 0.5:
        return f"{d.day:02d}/{d.month:02d}/{d.year} (UK)"
    return f"{d.day}/{d.month}/{d.year} (UK)"


def s_dotted_ymd(d, rng):
    return f"{d.year}.{d.month:02d}.{d.day:02d}"


def s_slash_ymd(d, rng):
    return f"{d.year}/{d.month}/{d.day}"


STYLES = [
    ("long_mdy", s_long_mdy, True),  # March 3, 2021
    ("long_dmy", s_long_dmy, True),  # 3 March 2021
    ("ordinal_of", s_ordinal_of, True),  # the 3rd of March, 2021
    ("abbr_mdy_ordinal", s_abbr_mdy_ordinal, True),  # Mar 3rd, 2021
    ("abbr_dmy", s_abbr_dmy, True),  # 3 Mar 2021 / 03-Mar-2021
    ("weekday_dmy", s_weekday_dmy, True),  # Wednesday, 3 March 2021
    ("weekday_abbr_mdy", s_weekday_abbr_mdy, True),  # Wed, Mar 3, 2021
    ("month_the_ordinal", s_month_the_ordinal, True),  # March the 3rd, 2021
    ("us_numeric", s_us_numeric, False),  # 03/03/2021 (US)
    ("uk_numeric", s_uk_numeric, False),  # 3/3/2021 (UK)
    ("dotted_ymd", s_dotted_ymd, False),  # 2021.03.03
    ("slash_ymd", s_slash_ymd, False),  # 2021/3/3
]


def recase(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.12:
        return text.lower()
    if r < 0.20:
        return text.upper()
    return text


def pick_dates(rng: random.Random) -> tuple[list[dt.date], list[dt.date]]:
    """Distinct dates for both splits; a few 29 Februaries in each."""
    leap_days = [
        dt.date(y, 2, 29)
        for y in range(FIRST_DAY.year, LAST_DAY.year + 1)
        if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    ]
    leaps = rng.sample(leap_days, LEAP_DAYS_TRAIN + LEAP_DAYS_HELDOUT)
    taken = {d.toordinal() for d in leaps}
    n_other = N_TRAIN + N_HELDOUT - len(leaps)
    pool = [o for o in range(FIRST_DAY.toordinal(), LAST_DAY.toordinal() + 1) if o not in taken]
    others = [dt.date.fromordinal(o) for o in rng.sample(pool, n_other)]
    n_other_held = N_HELDOUT - LEAP_DAYS_HELDOUT
    heldout = leaps[LEAP_DAYS_TRAIN:] + others[:n_other_held]
    train = leaps[:LEAP_DAYS_TRAIN] + others[n_other_held:]
    rng.shuffle(heldout)
    rng.shuffle(train)
    return train, heldout


def make_rows(dates: list[dt.date], rng: random.Random) -> list[dict]:
    # Balanced style assignment: cycle through all styles, shuffled.
    styles = [STYLES[i % len(STYLES)] for i in range(len(dates))]
    rng.shuffle(styles)
    rows = []
    for d, (name, fn, wordy) in zip(dates, styles, strict=True):
        text = fn(d, rng)
        if wordy:
            text = recase(text, rng)
        if rng.random() < CONTEXT_RATE:
            contexts = CONTEXTS
            if name == "dotted_ymd":  # "... 2021.03.03." would read badly
                contexts = [c for c in CONTEXTS if "{d}." not in c]
            text = rng.choice(contexts).format(d=text)
        prompt = PREFIX + text
        assert len(prompt.split()) <= MAX_WORDS, prompt
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": d.isoformat()},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    default_out = Path(__file__).resolve().parent.parent / "resources" / "datasets"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=default_out,
        help=f"where to write the files (default: {default_out})",
    )
    args = parser.parse_args(argv)

    rng = random.Random(SEED)
    train_dates, heldout_dates = pick_dates(rng)
    assert not {d for d in train_dates} & {d for d in heldout_dates}
    train = make_rows(train_dates, rng)
    heldout = make_rows(heldout_dates, rng)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "dates-train.jsonl", train)
    write_jsonl(args.out_dir / "dates-heldout.jsonl", heldout)
    print(f"wrote {len(train)} rows to {args.out_dir / 'dates-train.jsonl'}")
    print(f"wrote {len(heldout)} rows to {args.out_dir / 'dates-heldout.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
