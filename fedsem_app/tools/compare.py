"""``fedsem-compare``: run several strategies on one setting and line them up.

Offline tool: starts ``flwr run`` once per strategy.

Usage::

    fedsem-compare conf/compare.toml [--out DIR] [--strategies a,b] [--seeds 1,2,3]
                   [--federation-config "num-supernodes=3"]
    fedsem-compare --spec federation.yaml [PROFILE] [--strategies a,b] [--out DIR]
    fedsem-compare --runs RUN_DIR [RUN_DIR ...] --out DIR

The first form runs each strategy in turn through the real Flower path
(``flwr run . --run-config <file> --stream``) with the profile's shared
settings, then writes ``comparison.md``, ``comparison.csv``,
``quality_vs_round.png`` and ``quality_vs_bytes.png`` into the output folder
(the runs themselves go to ``<out>/runs``, their logs to ``<out>/logs``). A
failed run is reported in the table with its reason; the others go on. The
second form only lines up existing run folders.

With several seeds (``--seeds 1,2,3`` or ``seeds = [1, 2, 3]`` in ``[compare]``)
every strategy runs once per seed (the seed sets the split, the partitions, the
LoRA initialisation and the batches), and ``study.md`` / ``study.csv`` /
``study_quality.png`` show each strategy's mean and standard deviation across
seeds, its gain over round 0 and its cost to reach 90 % of ``pooled``'s gain;
``study.md`` and ``paired.csv`` also hold each strategy against ``local`` and
``fedavg-lora``, paired by seed and test prompt, with bootstrap intervals.

A profile is a run-config TOML file (as in ``conf/``) plus a ``[compare]``
table::

    [compare]
    strategies = ["fedsem", "fedavg-lora"]   # run in this order
    out = "~/.fedsem/compare/smollm2"        # optional output folder
    federation-config = "num-supernodes=3"   # optional
    seeds = [1, 2, 3]                        # optional: every strategy once per seed

Everything outside ``[compare]`` is handed to every run unchanged.

With ``--spec`` (a federation spec, see :mod:`fedsem_app.spec`) every run gets
``federation-spec`` and one simulated SuperNode per client; the profile is then
optional and, without a strategy list, every registered strategy that can run the
spec runs (those that need one shared model are left out over mixed models, with
their reason). A strategy asked for by name that cannot run the spec stops the
command before any run, with the message the server would give.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from flwr.common.config import flatten_dict

from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import DEFAULT_HOME, ConfigError
from fedsem_app.files import toml_value
from fedsem_app.spec.apply import check_strategy
from fedsem_app.spec.read import read_spec
from fedsem_app.spec.schema import SPEC_KEY, SpecError
from fedsem_app.strategies import get_strategy_class, strategy_names
from fedsem_app.tools.comparison import (
    RunRecord,
    load_run,
    markdown_table,
    table_row,
    write_comparison,
)
from fedsem_app.tools.study import write_study

DEFAULT_FEDERATION = "num-supernodes=3"
COMPARE_KEYS = ("strategies", "out", "federation-config", "seeds")
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b:?\s")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- profiles and run configs (pure) --------------------------------------------------


def read_profile(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a comparison profile into (shared flat run config, ``[compare]`` settings).

    Raises
    ------
    ConfigError
        On a ``[compare]`` key the command does not know, a missing strategy list,
        or a shared key that the command sets itself.
    """
    raw = tomllib.loads(Path(path).read_text())
    compare = dict(raw.pop("compare", {}))
    unknown = sorted(set(compare) - set(COMPARE_KEYS))
    if unknown:
        raise ConfigError(
            f"compare.{unknown[0]}", f"unknown key; allowed: {', '.join(COMPARE_KEYS)}"
        )
    strategies = compare.get("strategies", [])
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    if not strategies or not all(isinstance(s, str) for s in strategies):
        raise ConfigError("compare.strategies", "give a list of strategy names")
    compare["strategies"] = list(strategies)
    seeds = compare.get("seeds", [])
    if not isinstance(seeds, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in seeds
    ):
        raise ConfigError("compare.seeds", f"give a list of integers like [1, 2, 3], got {seeds!r}")
    try:
        shared = flatten_dict(raw)
    except ValueError as err:  # a list outside [compare]: run configs hold scalars only
        raise ConfigError("profile", f"{err} (use a comma-separated string for a list)") from err
    fixed = sorted(set(shared) & {"strategy", "results-dir", "run-name"})
    if fixed:
        raise ConfigError(fixed[0], "is set per run by fedsem-compare; remove it from the profile")
    return shared, compare


def run_config_text(flat: Mapping[str, Any]) -> str:
    """A flat run config as a TOML file that ``flwr run --run-config`` accepts."""
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in flat.items())


def failure_reason(lines: Sequence[str], returncode: int) -> str:
    """The most telling line of a failed run's output (the last exception line)."""
    lines = [_ANSI.sub("", line) for line in lines]
    for line in reversed(lines):
        if _ERROR_LINE.search(line):
            return line.strip()[:500]
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"flwr run exited with code {returncode}" + (f": {last[:300]}" if last else "")


# --- running strategies through flwr --------------------------------------------------


def flwr_env() -> dict[str, str]:
    """Environment for ``flwr``: this interpreter first on PATH, no runtime dependency install."""
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def default_app_dir() -> Path:
    """The project folder holding ``pyproject.toml`` (source checkout), else the cwd."""
    root = Path(__file__).resolve().parents[2]  # fedsem_app/tools/ -> app root
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def run_strategy(
    strategy: str,
    flat: Mapping[str, Any],
    runs_dir: Path,
    run_name: str,
    *,
    app_dir: Path,
    federation_config: str,
    log_path: Path,
) -> RunRecord:
    """Run one strategy with ``flwr run`` and read its run folder.

    The child's output is streamed to stdout line by line (prefixed with the
    strategy) and saved to ``log_path``.
    """
    config = {**flat, "strategy": strategy, "results-dir": str(runs_dir), "run-name": run_name}
    folder = runs_dir / run_name
    if folder.exists():
        # An interrupted earlier run (a study rerun after a stop): keep it aside, so the new
        # run gets this name (the server never reuses a folder) and is the one read back.
        aside = runs_dir / f"{run_name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"== {strategy}: moving the unfinished {folder} to {aside}", flush=True)
        folder.rename(aside)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="fedsem-compare-") as tmp:
        tmp.write(run_config_text(config))
        tmp.flush()
        command = [
            "flwr",
            "run",
            str(app_dir),
            "--run-config",
            tmp.name,
            "--stream",
            "--federation-config",
            federation_config,
        ]
        print(f"== {strategy}: {' '.join(command)}", flush=True)
        tail: deque[str] = deque(maxlen=400)
        t0 = time.perf_counter()
        try:
            with (
                open(log_path, "w") as log_file,
                subprocess.Popen(
                    command,
                    cwd=app_dir,
                    env=flwr_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                ) as proc,
            ):
                for line in proc.stdout:
                    log_file.write(line)
                    tail.append(line.rstrip("\n"))
                    print(f"[{strategy}] {line}", end="", flush=True)
                returncode = proc.wait()
        except OSError as err:
            return load_run(None, strategy, f"could not start flwr: {err}")
    wall = time.perf_counter() - t0
    error = ""
    if returncode != 0:
        error = failure_reason(list(tail), returncode)
    elif not (folder / "summary.json").is_file():
        error = failure_reason(list(tail), returncode)
        error = f"no summary.json in {folder}; last error: {error}"
    return load_run(folder, strategy, error, wall)


def spec_strategies(
    spec_path: Path, asked: Sequence[str] | None
) -> tuple[list[str], dict[str, str], str]:
    """Strategies to run over a federation spec, those left out and why, and the federation.

    Parameters
    ----------
    spec_path
        The spec file.
    asked
        Strategies asked for by name (all must fit the spec), or None for every
        registered strategy that fits.

    Raises
    ------
    SpecError
        If the spec is wrong, or a strategy asked for cannot run it.
    """
    spec = read_spec(spec_path)
    runnable, skipped = [], {}
    for name in asked or strategy_names():
        try:
            check_strategy(spec, name, get_strategy_class(name).needs_shared_model)
            runnable.append(name)
        except SpecError as err:
            if asked:
                raise
            skipped[name] = str(err)
    return runnable, skipped, spec.federation_config


def run_comparison(
    profile: Path | None,
    out: Path | None = None,
    strategies: Sequence[str] | None = None,
    federation_config: str | None = None,
    app_dir: Path | None = None,
    seeds: Sequence[int] | None = None,
    spec: Path | None = None,
) -> tuple[list[RunRecord], Path]:
    """Run every strategy of a profile (or spec) in turn and write the comparison into ``out``.

    With ``seeds`` (or the profile's ``seeds``), every strategy runs once per seed
    and the study table over seeds is written too (:func:`write_study`). With
    ``spec``, every run simulates that federation (see the module docstring).

    Returns
    -------
    tuple
        The runs, in order, and the output folder.
    """
    shared, compare = read_profile(profile) if profile else ({}, {})
    spec_federation = ""
    if spec is not None:
        spec = Path(spec).expanduser().resolve()
        asked = list(strategies or compare.get("strategies") or []) or None
        strategies, skipped, spec_federation = spec_strategies(spec, asked)
        for name, reason in skipped.items():
            print(f"== {name}: left out: {reason}", flush=True)
        shared = {**shared, SPEC_KEY: str(spec)}
    strategies = list(strategies or compare["strategies"])
    federation_config = (
        federation_config or spec_federation or compare.get("federation-config", DEFAULT_FEDERATION)
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out or compare.get("out") or DEFAULT_HOME / "compare" / stamp)
    out = out.expanduser().resolve()
    # Check every run's config before spending minutes on the first one.
    for strategy in strategies:
        get_strategy_class(strategy)
        load_app_config({**shared, "strategy": strategy})
    runs_dir = out / "runs"
    runs: list[RunRecord] = []
    notes = {"federation": f"`{federation_config}`", "profile": f"`{profile}`"}
    if spec is not None:
        notes["spec"] = f"`{spec}`"
    seeds = list(seeds or compare.get("seeds") or [])
    if seeds:
        notes["seeds"] = ", ".join(map(str, seeds))
    by_strategy: list[RunRecord] = []  # the same runs, labelled by strategy only
    for seed in seeds or [None]:
        for strategy in strategies:
            name = strategy if seed is None else f"{strategy}-s{seed}"
            config = dict(shared) if seed is None else {**shared, "seed": seed}
            run = run_strategy(
                strategy,
                config,
                runs_dir,
                f"{name}-{stamp}",
                app_dir=app_dir or default_app_dir(),
                federation_config=federation_config,
                log_path=out / "logs" / f"{name}.log",
            )
            print(f"== {name}: {'ok' if run.ok else f'FAILED: {run.error}'}", flush=True)
            runs.append(dataclasses.replace(run, label=name))
            by_strategy.append(run)
            write_comparison(runs, out, notes)  # refreshed after each run
            if seeds:
                write_study(by_strategy, out, notes)
    return runs, out


# --- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsem-compare",
        description="Run strategies on one setting through flwr run, or line up finished "
        "runs, and write comparison.md/.csv and plots.",
    )
    parser.add_argument("profile", nargs="?", type=Path, help="comparison profile (TOML)")
    parser.add_argument("--runs", nargs="+", type=Path, help="existing run folders to line up")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument(
        "--strategies", help="comma-separated strategies (default: the profile's list)"
    )
    parser.add_argument(
        "--federation-config",
        default=None,
        help=f"passed to flwr run (default: the profile's, else '{DEFAULT_FEDERATION}')",
    )
    parser.add_argument("--app", type=Path, help="Flower app folder (default: this project)")
    parser.add_argument(
        "--spec",
        type=Path,
        help="federation spec (YAML): every run simulates its clients; the profile is optional",
    )
    parser.add_argument(
        "--seeds", help="comma-separated seeds: every strategy once per seed (e.g. 1,2,3)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedsem-compare``; returns 0 if every run finished, else 1."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.profile or args.spec) == bool(args.runs):
        parser.error("give either a profile, --spec SPEC, or --runs RUN_DIR [RUN_DIR ...]")
    try:
        if args.runs:
            if not args.out:
                parser.error("--runs needs --out")
            runs = [load_run(folder.expanduser().resolve()) for folder in args.runs]
            out = args.out.expanduser().resolve()
            write_comparison(runs, out)
        else:
            strategies = args.strategies.split(",") if args.strategies else None
            try:
                seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
            except ValueError:
                parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
            runs, out = run_comparison(
                args.profile,
                args.out,
                strategies,
                args.federation_config,
                args.app,
                seeds,
                args.spec,
            )
    except ConfigError as err:
        print(f"fedsem-compare: {err}", file=sys.stderr)
        return 2
    print(markdown_table([table_row(r) for r in runs]))
    print(f"comparison written to {out}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
