"""Analytic bytes per round for the known models, and the assumptions behind the paper's 1006x.

A thin wrapper of ``fedsem-analytic`` (:mod:`fedsem_app.tools.analytic`) that always writes
its JSON and CSV to an output folder. Every option of ``fedsem-analytic`` passes
through; with none it prints the default table and the 1006x sweep for
Llama-3.1-405B.

Run::

    .venv/bin/python bench/analytic.py
    .venv/bin/python bench/analytic.py --rank 16 --targets qv --bytes-per-param 2 --out /tmp/a
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import output_folder  # noqa: E402
from fedsem_app.tools.analytic_cli import main as analytic_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run ``fedsem-analytic`` with ``--sweep Llama-3.1-405B`` and an output folder."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in args:
        args += ["--out", str(output_folder("analytic", None))]
    if "--sweep" not in args:
        args += ["--sweep", "Llama-3.1-405B", "--top", "24"]
    return analytic_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
