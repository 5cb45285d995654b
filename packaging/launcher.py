"""Entry script of the frozen app: the same ``qlora_studio.cli:main`` as the console script.

A frozen app is its own Python, so children started as ``sys.executable -m qlora_studio ...``
arrive here with ``-m qlora_studio`` in front of the subcommand; those two words are dropped.
"""

from __future__ import annotations

import multiprocessing
import sys


def _cli_args(argv: list[str]) -> list[str]:
    """``argv[1:]`` without a leading ``-m qlora_studio`` (how a child of the app is started)."""
    args = list(argv[1:])
    if args[:2] == ["-m", "qlora_studio"]:
        return args[2:]
    return args


if __name__ == "__main__":
    multiprocessing.freeze_support()  # worker processes (datasets, DataLoader) on Windows/macOS
    from qlora_studio.cli import main

    raise SystemExit(main(_cli_args(sys.argv)))
