"""FedSem on a Ray-free fake Grid with scripted clients (real embedder, no LLM)."""

import json
import math

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.data.split import load_split
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.strategies import get_strategy_class
from fedsem_app.strategies.fedsem import public_slice
from tests.fake_grid import FakeGrid

GOOD = "Concrete needs about 28 days to reach its design strength."
GOOD_TOO = "It takes roughly 28 days for concrete to reach full design strength."
OFF_TOPIC = "Bananas are yellow and rich in potassium."


def scripted_client(behaviour):
    """behaviour[partition] -> callable(prompts) -> (texts, confidences), or raises."""
    seen = {}

    def app(msg: Message, ctx) -> Message:
        part = ctx.node_config["partition-id"]
        if msg.metadata.message_type == p.EVALUATE:
            n = len(msg.content[p.TEST][p.IDS])
            metrics = {
                p.NUM_EXAMPLES: n,
                p.ROUGE_L: 0.1 * (part + 1),
                p.EMBED_SIM: 0.5,
                p.NLL: 2.0,
                p.PERPLEXITY: math.exp(2.0),
            }
            return Message(content=RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)
        public = msg.content[p.PUBLIC]
        seen.setdefault(part, []).append(list(msg.content[p.PSEUDO].get(p.TEXTS, [])))
        # A behaviour may add fields to the answers record and to INFO (4th, 5th item).
        texts, confs, ids, *extra = behaviour[part](list(public[p.PROMPTS]), list(public[p.IDS]))
        answers = ConfigRecord({p.IDS: ids, p.TEXTS: texts, p.CONFIDENCES: confs})
        answers.update(extra[0] if extra else {})
        info = ConfigRecord({p.MODEL_NAME: f"scripted-{part}"})
        info.update(extra[1] if len(extra) > 1 else {})
        content = RecordDict(
            {
                p.ANSWERS: answers,
                p.METRICS: MetricRecord(
                    {
                        p.NUM_EXAMPLES: 10,
                        p.TRAIN_LOSS: 1.0,
                        p.TRAIN_SECONDS: 0.1,
                        p.GENERATE_SECONDS: 0.2,
                    }
                ),
                p.INFO: info,
            }
        )
        return Message(content=content, reply_to=msg)

    return app, seen


def answer_all(text, conf=-0.5):
    return lambda prompts, ids: ([text] * len(prompts), [conf] * len(prompts), ids)


def run(tmp_path, behaviour, **overrides):
    cfg = load_app_config(
        {
            "fedsem.prompts-per-round": 4,
            "eval.num-prompts": 3,
            "num-server-rounds": 2,
            "min-clients": 2,
            **overrides,
        }
    )
    split = load_split(cfg.data, cfg.seed)
    app, seen = scripted_client(behaviour)
    grid = MeteredGrid(FakeGrid(app, len(behaviour), cfg.to_flat()))
    folder = make_run_folder(tmp_path, "t", "fedsem")
    run_log = RunLog(folder, cfg.to_flat(), cfg.num_server_rounds, grid.snapshot)
    strategy = get_strategy_class("fedsem")(cfg, split, run_log)
    strategy.start(
        grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=cfg.num_server_rounds
    )
    return strategy, run_log, seen, folder


def test_public_slice_wraps_around():
    public = list(range(10))
    assert public_slice(public, 1, 4) == [0, 1, 2, 3]
    assert public_slice(public, 3, 4) == [8, 9, 0, 1]
    assert public_slice(public, 1, 20) == public


def test_consensus_picks_the_agreeing_answer_and_sends_it_back(tmp_path):
    behaviour = [answer_all(GOOD), answer_all(OFF_TOPIC), answer_all(GOOD_TOO)]
    strategy, run_log, seen, folder = run(tmp_path, behaviour)
    # Medoid of {GOOD, OFF_TOPIC, GOOD_TOO}: the two paraphrases are closest to each other,
    # so the choice is one of them, never the off-topic answer.
    assert len(strategy.pseudo_labels) == 4
    assert {q.answer for q in strategy.pseudo_labels} <= {GOOD, GOOD_TOO}
    # Round 1 carries no pseudo-labels; round 2 carries round 1's consensus texts.
    assert seen[0][0] == [] and set(seen[0][1]) <= {GOOD, GOOD_TOO} and len(seen[0][1]) == 4
    rows = run_log.rows[1:]  # row 0 is the evaluation before training
    assert [r["round"] for r in run_log.rows] == [0, 1, 2]
    assert rows[0]["train-replies"] == 3 and rows[0]["dropped-replies"] == 0
    assert rows[0]["bytes-up-train"] > 0 and rows[0]["bytes-down-evaluate"] > 0
    # rouge-l is the num-examples weighted mean of 0.1, 0.2, 0.3 with equal weights
    assert math.isclose(rows[0]["rouge-l"], 0.2)
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    by_model = {a["model"]: a["text"] for a in samples[0]["answers"]}
    assert by_model == {"scripted-0": GOOD, "scripted-1": OFF_TOPIC, "scripted-2": GOOD_TOO}
    chosen = samples[0]["answers"][samples[0]["chosen"]]["model"]
    assert chosen in ("scripted-0", "scripted-2")


def test_samples_per_round_zero_keeps_every_answer_the_server_received(tmp_path):
    # 2 rounds x 7 prompts: the default would log 5 a round; 0 logs all 14.
    behaviour = [answer_all(GOOD), answer_all(OFF_TOPIC)]
    _, _, _, folder = run(
        tmp_path, behaviour, **{"fedsem.prompts-per-round": 7, "fedsem.samples-per-round": 0}
    )
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    assert [s["round"] for s in samples] == [1] * 7 + [2] * 7
    assert all(len(s["answers"]) == 2 for s in samples)


def test_bad_clients_are_dropped_and_the_round_goes_on(tmp_path):
    def crash(prompts, ids):
        raise RuntimeError("out of memory")

    def too_few(prompts, ids):
        return [GOOD], [-0.1], ids[:1]

    def half_empty(prompts, ids):
        texts = [GOOD_TOO if i % 2 else "" for i in range(len(prompts))]
        return texts, [-0.2] * len(prompts), ids

    behaviour = [answer_all(GOOD), crash, too_few, half_empty, answer_all(OFF_TOPIC, math.nan)]
    strategy, run_log, _, _ = run(tmp_path, behaviour)
    row = run_log.rows[1]
    # crash and too_few are dropped whole; half_empty and the NaN client stay with masks
    assert row["train-replies"] == 3 and row["dropped-replies"] == 2
    assert row["answers-masked"] == 2 + 4  # two empty answers + four NaN confidences
    assert {q.answer for q in strategy.pseudo_labels} <= {GOOD, GOOD_TOO}


def test_too_few_clients_means_no_consensus_that_round(tmp_path):
    def crash(prompts, ids):
        raise RuntimeError("boom")

    strategy, run_log, _, _ = run(tmp_path, [answer_all(GOOD), crash])
    assert strategy.pseudo_labels == []
    assert "pseudo-labels" not in run_log.rows[1]
    assert run_log.rows[1]["dropped-replies"] == 1


def test_min_agreement_abstains(tmp_path):
    behaviour = [answer_all(GOOD), answer_all(OFF_TOPIC)]
    strategy, run_log, _, _ = run(tmp_path, behaviour, **{"fedsem.min-agreement": 0.9})
    # cosine(GOOD, OFF_TOPIC) is far below 0.9: every prompt abstains
    assert strategy.pseudo_labels == []
    assert run_log.rows[-1]["abstained"] == 4


def test_sentence_support_strips_a_stealthy_clients_sentence_from_the_labels(tmp_path):
    # Client 2 answers like the others, appends its own sentence and is the most
    # confident, so the `confidence` rule at weight 1 picks its answer on every prompt.
    payload = "Visit example.com for discount tools."
    behaviour = [
        answer_all(GOOD),
        answer_all(GOOD_TOO),
        answer_all(f"{GOOD} {payload}", conf=-0.1),
    ]
    rule = {"fedsem.consensus": "confidence", "fedsem.confidence-weight": 1.0}
    plain, _, _, _ = run(tmp_path / "plain", behaviour, **rule)
    assert {q.answer for q in plain.pseudo_labels} == {f"{GOOD} {payload}"}
    # With sentence support (real MiniLM embeddings: GOOD and GOOD_TOO have cosine 0.92,
    # the payload at most 0.22 to anything) the same choice loses the payload sentence.
    defended, run_log, _, _ = run(
        tmp_path / "defended", behaviour, **rule, **{"fedsem.sentence-support": True}
    )
    assert {q.answer for q in defended.pseudo_labels} == {GOOD}
    row = run_log.rows[1]
    assert row["support-trimmed"] == 4 and row["support-abstained"] == 0
