"""The comparison table and plots on hand-made run folders; one real comparison (slow)."""

import csv
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.strategies import strategy_names
from fedsem_app.tools.compare import failure_reason, main, read_profile, run_config_text
from fedsem_app.tools.comparison import load_run, markdown_table, table_row, write_comparison

ROOT = Path(__file__).resolve().parents[1]


def make_run(folder: Path, strategy: str, rows: list[dict], finished: bool = True) -> Path:
    folder.mkdir(parents=True)
    config = {"strategy": strategy, "model.names": "tiny-llama", "num-server-rounds": len(rows)}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(rows))
    if finished:
        (folder / "summary.json").write_text(json.dumps({"strategy": strategy}))
    return folder


def rounds(*values):
    """values: (rouge-l, embed-sim, nll, bytes this round, train s, generate s, server s)."""
    rows, total = [], 0
    for i, (rouge, sim, nll, nbytes, train, gen, server) in enumerate(values, start=1):
        total += nbytes
        rows.append(
            {
                "round": i,
                "rouge-l": rouge,
                "embed-sim": sim,
                "nll": nll,
                "bytes-cumulative": total,
                "max-train-seconds": train,
                "max-generate-seconds": gen,
                "server-seconds": server,
                "elapsed-seconds": 10.0 * i,
            }
        )
    return rows


@pytest.fixture
def two_runs(tmp_path):
    text = make_run(
        tmp_path / "a",
        "fedsem",
        rounds((0.10, 0.50, 3.0, 1000, 2.0, 1.0, 0.5), (0.30, 0.40, 2.0, 3000, 4.0, 3.0, 1.5)),
    )
    params = make_run(
        tmp_path / "b",
        "fedavg-lora",
        rounds(
            (0.20, 0.60, 2.5, 100_000, 1.0, 0.0, 0.1),
            (0.15, 0.65, 2.8, 100_000, 1.0, 0.0, 0.1),
            (0.25, 0.55, 2.9, 100_000, 1.0, 0.0, 0.4),
        ),
    )
    return [load_run(text), load_run(params)]


def test_table_rows_by_hand(two_runs):
    fedsem, fedavg = (table_row(r) for r in two_runs)
    # fedsem: final = round 2; best rouge max(0.1, 0.3); best embed-sim max(0.5, 0.4);
    # best nll min(3, 2); bytes 1000 + 3000 = 4000 over 2 rounds = 2000 per round;
    # train s mean(2, 4) = 3, generate mean(1, 3) = 2, server mean(0.5, 1.5) = 1.
    assert fedsem == {
        "strategy": "fedsem",
        "status": "ok",
        "rounds": 2,
        "rouge-l-final": 0.30,
        "rouge-l-best": 0.30,
        "embed-sim-final": 0.40,
        "embed-sim-best": 0.50,
        "nll-final": 2.0,
        "nll-best": 2.0,
        "bytes-total": 4000,
        "bytes-per-round": 2000.0,
        "train-seconds-per-round": 3.0,
        "generate-seconds-per-round": 2.0,
        "server-seconds-per-round": 1.0,
        "run-seconds": 20.0,
        "wall-seconds": None,
    }
    # fedavg-lora: final = round 3; best rouge 0.25, embed-sim 0.65, nll 2.5;
    # 3 x 100 kB = 300 kB, 100 kB per round; server mean(0.1, 0.1, 0.4) = 0.2.
    assert fedavg["rouge-l-final"] == 0.25 and fedavg["rouge-l-best"] == 0.25
    assert fedavg["embed-sim-final"] == 0.55 and fedavg["embed-sim-best"] == 0.65
    assert fedavg["nll-final"] == 2.9 and fedavg["nll-best"] == 2.5
    assert fedavg["bytes-total"] == 300_000 and fedavg["bytes-per-round"] == 100_000
    assert fedavg["server-seconds-per-round"] == pytest.approx(0.2)
    assert fedavg["generate-seconds-per-round"] == 0.0 and fedavg["rounds"] == 3


def test_markdown_table_uses_human_units(two_runs):
    table = markdown_table([table_row(r) for r in two_runs])
    lines = table.splitlines()
    assert lines[0].startswith("| strategy | status | rounds | ROUGE-L final")
    assert lines[2].startswith("| fedsem | ok | 2 | 0.300 | 0.300 | 0.400 | 0.500 | 2.000")
    assert "| 4.0 kB | 2.0 kB |" in lines[2]
    assert "| 300.0 kB | 100.0 kB |" in lines[3]


def test_write_comparison_files(two_runs, tmp_path):
    out = tmp_path / "out"
    write_comparison(two_runs, out)
    with open(out / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["strategy"] for r in rows] == ["fedsem", "fedavg-lora"]
    assert rows[0]["bytes-total"] == "4000" and rows[1]["rouge-l-best"] == "0.25"
    assert rows[0]["wall-seconds"] == "" and rows[0]["error"] == ""
    report = (out / "comparison.md").read_text()
    assert "`model.names` = 'tiny-llama'" in report
    # The runs differ in their number of rounds, and the report says so.
    assert "differ in `num-server-rounds` (2, 3)" in report
    for plot in ("quality_vs_round.png", "quality_vs_bytes.png"):
        assert (out / plot).stat().st_size > 5000


def test_a_failed_run_stays_in_the_table(two_runs, tmp_path):
    partial = make_run(tmp_path / "c", "fedit", rounds((0.1, 0.2, 4.0, 500, 1, 0, 0)), False)
    missing = load_run(tmp_path / "never", "pooled", "ConfigError: config key 'model.names': x")
    runs = [*two_runs, load_run(partial), missing]
    out = tmp_path / "out"
    rows = write_comparison(runs, out)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert rows[2]["rounds"] == 1 and rows[2]["rouge-l-final"] == 0.1
    assert rows[3]["rounds"] == 0 and rows[3]["rouge-l-final"] is None
    report = (out / "comparison.md").read_text()
    assert "**fedit**: the run did not finish (no summary.json)" in report
    assert "**pooled**: ConfigError: config key 'model.names': x" in report
    assert "| pooled | failed | 0 | – |" in report


def test_runs_mode_of_the_command(two_runs, tmp_path):
    out = tmp_path / "cmp"
    code = main(["--runs", str(two_runs[0].folder), str(two_runs[1].folder), "--out", str(out)])
    assert code == 0
    assert (out / "comparison.md").is_file() and (out / "quality_vs_bytes.png").is_file()


def test_duplicate_strategies_get_their_folder_name(tmp_path):
    rows = rounds((0.1, 0.2, 3.0, 10, 1, 1, 1))
    runs = [load_run(make_run(tmp_path / n, "fedsem", rows)) for n in ("medoid", "cluster")]
    written = write_comparison(runs, tmp_path / "out")
    assert [r["strategy"] for r in written] == ["fedsem (medoid)", "fedsem (cluster)"]


@pytest.mark.parametrize("name", ["compare.toml", "compare-quick.toml"])
def test_profiles_parse_and_every_run_config_is_valid(name, tmp_path):
    shared, compare = read_profile(ROOT / "conf" / name)
    assert compare["strategies"] == [
        "fedsem",
        "fedavg-lora",
        "fedit",
        "fedprox-lora",
        "local",
        "pooled",
    ]
    for strategy in compare["strategies"]:
        flat = {**shared, "strategy": strategy, "results-dir": "/tmp/x", "run-name": strategy}
        # The temp file handed to flwr run reads back to the same values.
        path = tmp_path / f"{strategy}.toml"
        path.write_text(run_config_text(flat))
        assert tomllib.loads(path.read_text()) == flat
        cfg = load_app_config(flat)
        assert len(set(cfg.model.names)) == 1


def test_profile_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('strategy = "fedsem"\n[compare]\nstrategies = ["fedsem"]\n')
    with pytest.raises(ConfigError, match="set per run by fedsem-compare"):
        read_profile(bad)
    bad.write_text('[compare]\nstrategy = ["fedsem"]\n')
    with pytest.raises(ConfigError, match="compare.strategy"):
        read_profile(bad)
    bad.write_text('[model]\nnames = ["a", "b"]\n[compare]\nstrategies = ["fedsem"]\n')
    with pytest.raises(ConfigError, match="comma-separated string"):
        read_profile(bad)
    good = tmp_path / "good.toml"
    good.write_text('a = 1\n[t]\nb = "x"\n[compare]\nstrategies = ["fedsem"]\n')
    assert read_profile(good)[0] == {"a": 1, "t.b": "x"}


def test_failure_reason_picks_the_exception_line():
    lines = [
        "INFO : starting",
        "Traceback (most recent call last):",
        "  File x",
        "ValueError: boom",
    ]
    assert failure_reason(lines, 1) == "ValueError: boom"
    assert failure_reason(["INFO : nothing"], 3) == "flwr run exited with code 3: INFO : nothing"
    # What `flwr run --stream` prints when the ServerApp refuses a config (exit code 0!)
    flwr_output = [
        "    raise ConfigError(",
        "fedsem_app.config.errors.ConfigError: config key 'model.names': mixes 2 models",
        "\x1b[91mERROR \x1b[0m:     Exit Code: 700",
        "An unhandled exception occurred when running the simulation.",
    ]
    assert failure_reason(flwr_output, 0) == flwr_output[1]


# About 4 minutes on 2 idle cores: one `flwr run` per strategy.
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not on PATH")
def test_tiny_comparison_of_every_strategy_through_flwr_run(tmp_path, flwr_env, monkeypatch):
    for key in ("FLWR_HOME", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT"):
        monkeypatch.setenv(key, flwr_env[key])
    names = strategy_names()
    assert {"fedsem", "fedavg-lora", "fedit", "fedprox-lora", "local", "pooled"} <= set(names)
    profile = tmp_path / "tiny.toml"
    profile.write_text(
        "num-server-rounds = 1\n"
        '[model]\nnames = "tiny-llama"\n'
        "[train]\nlocal-steps = 2\nmax-seq-len = 64\n"
        "[gen]\nmax-new-tokens = 8\n"
        "[fedsem]\nprompts-per-round = 4\n"
        "[eval]\nnum-prompts = 4\n"
        f"[compare]\nstrategies = {json.dumps(names)}\n"
        'federation-config = "num-supernodes=2"\n'
    )
    out = tmp_path / "out"
    code = main([str(profile), "--out", str(out)])
    assert code == 0, (out / "comparison.md").read_text()
    with open(out / "comparison.csv") as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(names)
    for row in rows.values():
        assert row["status"] == "ok" and row["rounds"] == "1", row
        assert 0 <= float(row["rouge-l-final"]) <= 1
    # Adapters cross the network both ways for the parameter strategies; local sends
    # only metrics, fedsem texts.
    for name in ("fedavg-lora", "fedit", "fedprox-lora"):
        assert float(rows[name]["bytes-total"]) > 10 * float(rows["local"]["bytes-total"])
    assert float(rows["fedsem"]["bytes-total"]) > float(rows["local"]["bytes-total"])
    for name in names:
        assert "[round 1/1]" in (out / "logs" / f"{name}.log").read_text()


def test_study_profile_and_seed_lists(tmp_path):
    shared, compare = read_profile(ROOT / "conf" / "study.toml")
    assert compare["strategies"] == ["local", "pooled", "fedsem", "fedavg-lora"]
    cfg = load_app_config({**shared, "strategy": "fedsem"})
    # Nothing in the study profile names the packaged dataset: data.path can replace it.
    assert "data.name" not in shared and "data.path" not in shared
    assert cfg.data.partitioner == "category"
    # Generated answers on every test prompt, evaluated before training and after the last
    # round only.
    assert cfg.eval.generate is True and cfg.eval.num_prompts == 0
    assert cfg.eval.every == cfg.num_server_rounds
    good = tmp_path / "seeds.toml"
    good.write_text('[compare]\nstrategies = ["local"]\nseeds = [1, 2, 3]\n')
    assert read_profile(good)[1]["seeds"] == [1, 2, 3]
    good.write_text('[compare]\nstrategies = ["local"]\nseeds = ["1"]\n')
    with pytest.raises(ConfigError, match="compare.seeds"):
        read_profile(good)
