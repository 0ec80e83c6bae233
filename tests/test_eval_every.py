"""eval.every: which rounds are evaluated, what the skipped rounds' rows say, and resume."""

import json

import pytest
from flwr.app import Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import evaluated_rounds, is_eval_round
from fedsem_app.run.checkpoint import read_checkpoint
from fedsem_app.tools.comparison import RunRecord, table_row
from fedsem_app.tools.study import first_reaching, gain_per_round, study_rows
from tests.test_checkpoint import (
    BASE,
    ROUND_3_EVALUATE,
    SimulatedCrash,
    assert_same_run,
    fedsem_clients,
    jsonl,
    run_main,
)
from tests.test_fedsem_strategy import scripted_client
from tests.test_sampling import SAMPLED, messages_per_round

# --- which rounds -----------------------------------------------------------------------------


def test_evaluated_rounds_by_hand():
    # 5 rounds, every 2: round 0, rounds 2 and 4, and the last round 5.
    assert evaluated_rounds(5, 2) == [0, 2, 4, 5]
    assert evaluated_rounds(6, 3) == [0, 3, 6]  # the last one is a multiple: listed once
    assert evaluated_rounds(3, 1) == [0, 1, 2, 3]
    # every >= rounds: before training and after the last round only.
    assert evaluated_rounds(3, 3) == [0, 3]
    assert evaluated_rounds(3, 10) == [0, 3]
    assert not is_eval_round(1, 5, 2) and not is_eval_round(3, 5, 2)


@pytest.mark.parametrize("every", [0, -2])
def test_every_below_one_is_refused_naming_the_key(every):
    with pytest.raises(ConfigError, match="positive integer") as info:
        load_app_config({"eval.every": every})
    assert info.value.key == "eval.every"


def test_default_evaluates_every_round():
    assert load_app_config({}).eval.every == 1


@pytest.mark.parametrize("strategy", [*SAMPLED, "fedit", "pooled"])
def test_every_strategy_sends_no_evaluate_message_on_a_skipped_round(tmp_path, strategy):
    sent = messages_per_round(tmp_path, strategy, num_nodes=3, rounds=5, **{"eval.every": 2})
    evaluated = sorted(rnd for rnd, kind in sent if kind == p.EVALUATE)
    trained = sorted(rnd for rnd, kind in sent if kind == p.TRAIN)
    assert evaluated == [0, 2, 4, 5]
    assert trained == [1, 2, 3, 4, 5]


# --- what a run writes ------------------------------------------------------------------------


def with_prompt_scores(app):
    """The scripted clients, whose evaluate replies also carry per-prompt scores."""

    def client(msg: Message, ctx) -> Message:
        reply = app(msg, ctx)
        if msg.metadata.message_type != p.EVALUATE:
            return reply
        n = len(msg.content[p.TEST][p.IDS])
        part = ctx.node_config["partition-id"]
        metrics = dict(reply.content[p.METRICS])
        metrics[p.PER_PROMPT[p.ROUGE_L]] = [0.1 * (part + 1)] * n
        metrics[p.NLL_SUMS] = [2.0 * (i + 1) for i in range(n)]
        metrics[p.NLL_TOKENS] = [float(i + 1) for i in range(n)]
        return Message(content=RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)

    return client


def test_skipped_rounds_say_so_and_carry_no_quality(tmp_path):
    cfg = {**BASE, "num-server-rounds": 5, "eval.every": 2, "results-dir": str(tmp_path)}
    app, _ = scripted_client(fedsem_clients())
    grid = run_main(with_prompt_scores(app), 3, cfg)
    folder = tmp_path / "job"

    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["evaluated"] for r in rows] == [True, False, True, False, True, True]
    for row in rows:
        assert ("rouge-l" in row) == row["evaluated"]
        assert ("eval-replies" in row) == row["evaluated"]
    # Skipped rounds still train and count their bytes, and no evaluate message went out.
    assert all(rows[r]["train-replies"] == 3 for r in (1, 3))
    evaluate_sent = [m for m in grid.sent if m.metadata.message_type == p.EVALUATE]
    assert len(evaluate_sent) == 4 * 3  # rounds 0, 2, 4, 5; three nodes each
    assert [rows[r]["bytes-down-evaluate"] for r in (1, 3)] == [0, 0]
    clients = jsonl(folder / "clients.jsonl")
    assert sorted({c["round"] for c in clients if c["phase"] == "evaluate"}) == [0, 2, 4, 5]
    # Per-prompt scores of every evaluated round, per client, with the test prompt ids.
    scores = jsonl(folder / "prompt_scores.jsonl")
    assert sorted({s["round"] for s in scores}) == [0, 2, 4, 5]
    assert len(scores) == 4 * 3
    first = scores[0]
    assert len(first["ids"]) == 3 and first["nll-sum-per-prompt"] == [2.0, 4.0, 6.0]
    assert first["nll-tokens-per-prompt"] == [1.0, 2.0, 3.0]
    assert "rouge-l-per-prompt" in first
    # The summary reads the last (evaluated) round; the table's best skips the others.
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 5 and summary["final"]["nll"] == pytest.approx(2.0)
    row = table_row(RunRecord("fedsem", folder, rows, summary))
    assert row["rouge-l-final"] == pytest.approx(0.2)  # mean of 0.1, 0.2, 0.3


def test_a_run_with_skipped_rounds_resumes_like_an_uninterrupted_one(tmp_path):
    # 4 rounds, every 2: rounds 0, 2 and 4 are evaluated. The run dies in round 3's
    # (empty) evaluation step, after round 3's training wrote its log lines.
    base = {**BASE, "eval.every": 2}
    through_cfg = {**base, "results-dir": str(tmp_path / "through")}
    crash_cfg = {**base, "results-dir": str(tmp_path / "stopped")}
    app, _ = scripted_client(fedsem_clients())
    run_main(with_prompt_scores(app), 3, through_cfg)
    app, _ = scripted_client(fedsem_clients())
    with pytest.raises(SimulatedCrash):
        run_main(with_prompt_scores(app), 3, crash_cfg, crash_on_call=ROUND_3_EVALUATE)
    folder = tmp_path / "stopped" / "job"
    assert read_checkpoint(folder).round == 2

    app, _ = scripted_client(fedsem_clients())
    resumed = run_main(with_prompt_scores(app), 3, {**crash_cfg, "resume-from": str(folder)})

    assert_same_run(folder, tmp_path / "through" / "job")
    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["evaluated"] for r in rows] == [True, False, True, False, True]
    # Rounds 3 and 4 ran: 2 x 3 train messages, 3 evaluate messages (round 4 only).
    kinds = [m.metadata.message_type for m in resumed.sent]
    assert kinds.count(p.TRAIN) == 6 and kinds.count(p.EVALUATE) == 3
    scores = jsonl(folder / "prompt_scores.jsonl")
    assert sorted(s["round"] for s in scores) == [0, 0, 0, 2, 2, 2, 4, 4, 4]


# --- offline tables over evaluated rounds ----------------------------------------------------


def rows_every_2(nll_by_round, bytes_per_round=100):
    """Metrics rows of a run evaluated at the rounds given (the others skipped)."""
    last = max(nll_by_round)
    rows = []
    for rnd in range(last + 1):
        row = {
            "round": rnd,
            "bytes-cumulative": bytes_per_round * rnd,
            "elapsed-seconds": 10.0 * rnd,
        }
        if rnd in nll_by_round:
            row.update({"evaluated": True, "nll": nll_by_round[rnd]})
        else:
            row["evaluated"] = False
        rows.append(row)
    return rows


def test_cost_to_target_uses_evaluated_rounds_only():
    # Evaluated at 0, 2, 4: gains 0.5 at round 2 and 1.0 at round 4; rounds 1 and 3 have none.
    rows = rows_every_2({0: 3.0, 2: 2.5, 4: 2.0})
    assert gain_per_round(rows, "nll") == {2: pytest.approx(0.5), 4: pytest.approx(1.0)}
    # The first evaluated round with a gain of at least 0.4 is round 2 (200 bytes, 20 s).
    assert first_reaching(rows, "nll", 0.4) == {"round": 2, "bytes": 200, "seconds": 20.0}


def test_study_table_over_runs_with_skipped_rounds():
    pooled = RunRecord("pooled", rows=rows_every_2({0: 3.0, 2: 2.5, 4: 2.0}), config={"seed": 1})
    local = RunRecord("local", rows=rows_every_2({0: 3.0, 2: 2.9, 4: 2.2}), config={"seed": 1})
    table = {r["label"]: r for r in study_rows([pooled, local])}
    # Target: 90 % of pooled's final gain (1.0) = 0.9; local reaches 0.8 at most: never.
    assert table["pooled"]["target-reached"] == "1/1"
    assert table["pooled"]["bytes-to-target"] == 400
    assert table["local"]["target-reached"] == "0/1"
    assert table["local"]["nll-final"] == pytest.approx(2.2)
    # Bytes per round count every trained round, evaluated or not: 400 bytes / 4 rounds.
    assert table["local"]["bytes-per-round"] == pytest.approx(100)
