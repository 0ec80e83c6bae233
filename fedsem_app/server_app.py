"""ServerApp: read the config, prepare data and results, run the chosen strategy.

Runs on the server: Flower starts it as the run's ServerApp.
"""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedsem_app.clients import check_model_name
from fedsem_app.config.app import AppConfig, load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.console import ignore_harmless_warnings
from fedsem_app.data.split import load_split
from fedsem_app.final import run_config_record
from fedsem_app.run.checkpoint import Checkpoint, open_resume
from fedsem_app.run.export import FinalAdapterWatch, write_final
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.run.tracking import open_tracker, tracked
from fedsem_app.spec.apply import apply_spec, check_strategy, spec_summary
from fedsem_app.spec.schema import FederationSpec
from fedsem_app.strategies import STRATEGIES, get_strategy_class, shared_model_problem

app = ServerApp()


def check_setup(cfg: AppConfig, spec: FederationSpec | None = None):
    """Fail before any training on a wrong strategy, model, data setting or spec.

    Returns
    -------
    tuple
        The strategy class and the server's data split.
    """
    strategy_cls = get_strategy_class(cfg.strategy)
    if spec is not None:  # name the client: the spec's error says which one and why
        check_strategy(spec, cfg.strategy, strategy_cls.needs_shared_model)
    for name in cfg.model.names:
        try:
            check_model_name(name)
        except ValueError as err:
            raise ConfigError("model.names", str(err)) from err
    problem = shared_model_problem(cfg.strategy, cfg.model.names)
    if problem:
        raise ConfigError("model.names", problem)
    if cfg.dp.enabled and not strategy_cls.supports_dp:
        supported = sorted(n for n, c in STRATEGIES.items() if c.supports_dp)
        raise ConfigError(
            "dp.noise-multiplier",
            f"strategy {cfg.strategy!r} has no DP option; it applies to "
            f"{', '.join(supported)} (fedsem: see docs/privacy.md); set dp.noise-multiplier=0",
        )
    split = load_split(cfg.data, cfg.seed)
    if strategy_cls.uses_public_prompts and not split.public:
        # Only a role field can leave the public set empty (a random split never does).
        raise ConfigError(
            "data.role-field",
            f"strategy {cfg.strategy!r} answers public prompts, but no row has the role "
            "'public'; give some rows that role, or run a strategy that needs none "
            f"({', '.join(sorted(n for n, c in STRATEGIES.items() if not c.uses_public_prompts))})",
        )
    if strategy_cls.uses_public_prompts and cfg.fedsem.prompts_per_round > len(split.public):
        raise ConfigError(
            "fedsem.prompts-per-round",
            f"{cfg.fedsem.prompts_per_round} exceeds the {len(split.public)} public prompts; "
            "lower it or raise data.public-fraction",
        )
    return strategy_cls, split


def resume_run(checkpoint: Checkpoint, cfg: AppConfig, meter, run_log, strategy) -> ArrayRecord:
    """Put a checkpoint's state back into the byte meter, the run log and the strategy.

    Returns
    -------
    ArrayRecord
        The global arrays to go on from (the checkpoint's, or the strategy's
        initial ones if it exchanges none).
    """
    meter.restore(checkpoint.run_state.get("byte-totals", {}))
    run_log.restore(checkpoint.run_state)
    strategy.resume(checkpoint)
    if checkpoint.round >= cfg.num_server_rounds:
        log(
            WARNING,
            "fedsem: nothing to do: %s is at round %d of %d already; raise num-server-rounds "
            "to run more rounds",
            checkpoint.folder,
            checkpoint.round,
            cfg.num_server_rounds,
        )
    else:
        log(
            INFO,
            "fedsem: resuming %s at round %d of %d",
            checkpoint.folder,
            checkpoint.round + 1,
            cfg.num_server_rounds,
        )
    return checkpoint.arrays if checkpoint.arrays is not None else strategy.initial_arrays()


def run_rounds(strategy, cfg: AppConfig, grid: Grid, folder, arrays: ArrayRecord):
    """Run the rounds that are left, telling every client the run folder and its length.

    Returns
    -------
    tuple
        The global arrays the run ended with (None for strategies whose clients keep
        their own adapters: they save them themselves) and, by node id, where clients
        reported their saved final adapters.
    """
    watch = FinalAdapterWatch(grid)
    clients_export = len(arrays) == 0  # no global adapter: each client saves its own
    if strategy.first_round <= cfg.num_server_rounds:
        result = strategy.start(
            grid=watch,
            initial_arrays=arrays,
            num_rounds=cfg.num_server_rounds,
            timeout=cfg.round_timeout,
            train_config=run_config_record(folder, cfg.num_server_rounds, clients_export),
            evaluate_config=run_config_record(folder, cfg.num_server_rounds, clients_export),
        )
        if len(result.arrays):
            arrays = result.arrays
    return (None if clients_export else arrays), watch.reported


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated job end to end (or resume one) and write its results folder."""
    # In simulation this process also starts Ray, whose start-up warns (console.py).
    ignore_harmless_warnings()
    cfg, spec = apply_spec(load_app_config(context.run_config))  # the spec's models, if any
    strategy_cls, split = check_setup(cfg, spec)
    checkpoint = open_resume(cfg) if cfg.resume_from else None

    meter = MeteredGrid(grid)
    folder = (
        checkpoint.folder
        if checkpoint
        else make_run_folder(cfg.results_root, cfg.run_name, cfg.strategy)
    )
    log(
        INFO,
        "fedsem: strategy %s, %d rounds, %s; results in %s",
        cfg.strategy,
        cfg.num_server_rounds,
        spec_summary(spec) if spec else "models " + ", ".join(cfg.model.names),
        folder,
    )
    # Flower's run id goes with the results: `flwr ls` / `flwr log` find the run by it.
    flat = {**cfg.to_flat(), "flwr-run-id": context.run_id}
    tracker = open_tracker(cfg.tracking, folder)
    run_log = tracked(RunLog(folder, flat, cfg.num_server_rounds, meter.snapshot), tracker)

    strategy = strategy_cls(cfg, split, run_log)
    strategy.expected_clients = spec.names if spec else ()
    arrays = (
        resume_run(checkpoint, cfg, meter, run_log, strategy)
        if checkpoint
        else strategy.initial_arrays()
    )
    global_arrays, reported = run_rounds(strategy, cfg, meter, folder, arrays)
    summary = run_log.finish(
        {
            "strategy": cfg.strategy,
            "results": str(folder),
            "flwr-run-id": context.run_id,
            **strategy.privacy_summary(),
        }
    )
    write_final(cfg, folder, summary, reported, global_arrays)
    tracker.close()
    log(INFO, "fedsem: done: %s", summary)
