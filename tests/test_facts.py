"""Role-fixed splits, the generated private-facts dataset and fact-accuracy."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from fedsem_app import protocol as p
from fedsem_app.clients.evaluation import FactTargets, contains_value, fact_accuracy, normalise
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import DataConfig
from fedsem_app.data.facts import DECOY_CATEGORY, generate_facts, main
from fedsem_app.data.partition import load_partition
from fedsem_app.data.records import QAPair, load_node_private, load_records
from fedsem_app.data.split import load_split, split_dataset
from fedsem_app.server_app import check_setup
from fedsem_app.strategies.harness import test_record as build_test_record

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- role field: which rows land in which role --------------------------------

ROLE_ROWS = [
    {"prompt": "q0", "answer": "a0", "split": "private"},
    {"prompt": "q1", "answer": "a1", "split": "test"},
    {"prompt": "q2", "answer": "", "split": "public"},  # public rows need no answer
    {"prompt": "q3", "answer": "a3", "split": "PRIVATE"},  # case does not matter
    {"prompt": "q4", "answer": "a4", "split": "test"},
    {"prompt": "q5", "answer": "a5", "split": "public"},
]


def test_role_field_puts_each_row_in_its_role(tmp_path):
    cfg = DataConfig(path=write_jsonl(tmp_path / "qa.jsonl", ROLE_ROWS), role_field="split")

    split = load_split(cfg, seed=7)

    # Ids are row positions; the fractions (0.1 / 0.3 by default) play no part.
    assert sorted(q.id for q in split.private) == [0, 3]
    assert sorted(q.id for q in split.test) == [1, 4]
    assert sorted(q.id for q in split.public) == [2, 5]
    assert all(q.answer == "" for q in split.public)  # answers dropped
    assert {q.id: q.answer for q in split.test} == {1: "a1", 4: "a4"}


def test_role_split_order_within_a_part_follows_the_seed():
    records = [
        QAPair(i, f"q{i}", f"a{i}", "c", role="test" if i < 6 else "private") for i in range(8)
    ]

    a, b = split_dataset(records, 0.1, 0.3, seed=1), split_dataset(records, 0.1, 0.3, seed=1)
    others = {tuple(q.id for q in split_dataset(records, 0.1, 0.3, seed=s).test) for s in range(5)}

    assert a == b
    assert {q.id for q in a.test} == set(range(6)) and {q.id for q in a.private} == {6, 7}
    assert len(others) > 1  # a different seed, another order of the same test rows


def test_unknown_role_names_the_row_and_the_allowed_values(tmp_path):
    rows = [*ROLE_ROWS[:2], {"prompt": "q2", "answer": "a2", "split": "holdout"}]
    cfg = DataConfig(path=write_jsonl(tmp_path / "qa.jsonl", rows), role_field="split")

    with pytest.raises(ConfigError) as err:
        load_records(cfg)

    message = str(err.value)
    assert "data.role-field" in message
    assert "row 2" in message and "'holdout'" in message
    assert "private, public, test" in message


def test_file_without_test_rows_is_refused(tmp_path):
    rows = [r for r in ROLE_ROWS if r["split"] != "test"]
    cfg = DataConfig(path=write_jsonl(tmp_path / "qa.jsonl", rows), role_field="split")

    with pytest.raises(ConfigError, match="no row has the role 'test'"):
        load_split(cfg, seed=0)


def test_missing_role_column_names_the_key_and_the_columns(tmp_path):
    cfg = DataConfig(path=write_jsonl(tmp_path / "qa.jsonl", ROLE_ROWS), role_field="part")

    with pytest.raises(ConfigError, match="data.role-field.*'part'.*split"):
        load_records(cfg)


def test_without_public_rows_only_strategies_that_need_none_run(tmp_path):
    rows = [r for r in ROLE_ROWS if r["split"] != "public"]
    base = {"data.path": write_jsonl(tmp_path / "qa.jsonl", rows), "data.role-field": "split"}

    _, split = check_setup(load_app_config({**base, "strategy": "local"}))
    with pytest.raises(ConfigError) as err:
        check_setup(load_app_config({**base, "strategy": "fedsem"}))

    assert split.public == () and len(split.test) == 2
    assert "no row has the role 'public'" in str(err.value)
    assert "local" in str(err.value) and "fedavg-lora" in str(err.value)


def test_node_file_with_roles_trains_on_its_private_rows_only(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ROLE_ROWS)

    with_roles = load_node_private(path, DataConfig(role_field="split"))
    without = load_node_private(path, DataConfig(role_field="absent-column"))

    assert [q.id for q in with_roles] == [0, 3]
    assert [q.id for q in without] == [0, 1, 3, 4, 5]  # no role column: every answered row


# --- the generated facts ------------------------------------------------------


def test_generator_is_deterministic_in_its_seed():
    assert generate_facts(seed=1) == generate_facts(seed=1)
    assert generate_facts(seed=1) != generate_facts(seed=2)


def test_generator_shape_by_hand():
    # 2 people x 2 attributes = 4 facts, each 3 private + 1 public + 1 test rows.
    rows = generate_facts(seed=3, entities=2, attributes=2, private_phrasings=3)

    assert len(rows) == 4 * 5
    assert [sum(r["role"] == role for r in rows) for role in ("private", "public", "test")] == [
        12,
        4,
        4,
    ]
    for fact in {r["fact"] for r in rows}:
        same = [r for r in rows if r["fact"] == fact]
        assert len({r["prompt"] for r in same}) == 5  # five different phrasings
        assert len({r["value"] for r in same}) == 1 and len({r["answer"] for r in same}) == 1
        assert same[0]["value"] in same[0]["answer"]
        assert same[0]["entity"] in same[0]["prompt"]
    assert {r["attribute"] for r in rows} == {"home-town", "profession"}


def test_half_coverage_gives_uncovered_facts_a_decoy_public_prompt():
    rows = generate_facts(seed=0, entities=2, attributes=2, public_coverage=0.5)
    people = {r["entity"] for r in rows if r["category"] != DECOY_CATEGORY}
    public = [r for r in rows if r["role"] == "public"]
    decoys = [r for r in public if r["category"] == DECOY_CATEGORY]
    tests = [r for r in rows if r["role"] == "test"]

    split = split_dataset(
        load_records(
            DataConfig(
                name="facts", facts_entities=2, facts_attributes=2, facts_public_coverage=0.5
            )
        ),
        0.1,
        0.3,
        0,
    )

    assert len(public) == 4 and len(decoys) == 2  # round(0.5 x 4) facts covered
    assert not {r["entity"] for r in decoys} & people
    assert sum(r["covered"] for r in tests) == 2
    # The split finds the same covered facts from the public rows' fact ids.
    assert {q.fact for q, c in zip(split.test, split.covered(), strict=True) if c} == {
        r["fact"] for r in tests if r["covered"]
    }


def test_no_coverage_keeps_the_public_set_size():
    rows = generate_facts(seed=0, entities=4, attributes=3, public_coverage=0.0)
    public = [r for r in rows if r["role"] == "public"]

    assert len(public) == 12 and all(r["category"] == DECOY_CATEGORY for r in public)


def test_category_partition_keeps_each_person_with_one_client():
    cfg = DataConfig(name="facts", partitioner="category")  # 24 people, 3 attributes

    parts = [load_partition(cfg, 42, 3, k) for k in range(3)]

    people = [{q.category for q in part} for part in parts]
    facts = [{q.fact for q in part} for part in parts]
    assert [len(s) for s in people] == [8, 8, 8]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
    assert not (facts[0] & facts[1] or facts[0] & facts[2] or facts[1] & facts[2])
    assert all(len(part) == 8 * 3 * 3 for part in parts)  # 3 private phrasings per fact


def test_jsonl_export_reads_back_as_the_same_split(tmp_path, capsys):
    out = tmp_path / "facts.jsonl"

    main(["--seed", "5", "--entities", "3", "--public-coverage", "0.5", "--out", str(out)])
    from_file = load_split(DataConfig(path=str(out), role_field="role"), seed=9)
    generated = load_split(
        DataConfig(name="facts", facts_seed=5, facts_entities=3, facts_public_coverage=0.5), seed=9
    )

    assert "wrote 45 rows" in capsys.readouterr().out  # 9 facts x (3 + 1 + 1)
    assert from_file == generated
    assert from_file.covered() == generated.covered()


def test_facts_shape_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match="data.facts-private-phrasings"):
        DataConfig(name="facts", facts_private_phrasings=5)
    with pytest.raises(ConfigError, match="data.facts-public-coverage"):
        DataConfig(name="facts", facts_public_coverage=1.5)


def test_test_record_carries_values_facts_and_coverage_only_for_such_data():
    facts = load_split(DataConfig(name="facts", facts_entities=2, facts_public_coverage=0.5), 0)
    plain = split_dataset([QAPair(i, f"q{i}", f"a{i}", "c") for i in range(10)], 0.2, 0.3, 0)

    record = build_test_record(facts, num_prompts=4)

    assert list(record[p.VALUES]) == [q.value for q in facts.test[:4]]
    assert list(record[p.FACTS]) == [q.fact for q in facts.test[:4]]
    assert list(record[p.COVERED]) == facts.covered()[:4]
    assert p.VALUES not in build_test_record(plain)


# --- fact-accuracy --------------------------------------------------------------


def test_normalise_by_hand():
    assert normalise("Zorvik's home town is  Belmora.") == "zorvik s home town is belmora"
    assert normalise("  TEAL!\n") == "teal"


@pytest.mark.parametrize(
    ("answer", "value", "found"),
    [
        ("Zorvik's home town is Belmora.", "Belmora", True),
        ("BELMORA!", "belmora", True),
        ("He lives in Belmoran hills.", "Belmora", False),  # whole words only
        ("born in 18505", "1850", False),
        ("Tessaly   Cove, of course", "Tessaly Cove", True),
        ("anything", "", False),
    ],
)
def test_contains_value(answer, value, found):
    assert contains_value(answer, value) is found


def test_fact_accuracy_overall_and_per_subset_by_hand():
    answers = ["It is Belmora.", "teal", "I do not know.", "born 1850", "whatever"]
    targets = FactTargets(
        values=("Belmora", "crimson", "cooper", "1850", ""),  # last prompt has no value
        subsets=(
            ("covered", (True, True, False, False, True)),
            ("uncovered", (False, False, True, True, False)),
            ("own", (False, False, False, False, True)),  # only the unscored prompt
        ),
    )

    out = fact_accuracy(answers, targets)

    # Hits on the four scored prompts: 1, 0, 0, 1.
    assert out[p.FACT_ACCURACY] == 0.5
    assert out[p.PER_PROMPT[p.FACT_ACCURACY]] == [1.0, 0.0, 0.0, 1.0]
    assert out["fact-accuracy-covered"] == 0.5  # Belmora yes, crimson no
    assert out["fact-accuracy-uncovered"] == 0.5  # cooper no, 1850 yes
    assert "fact-accuracy-own" not in out  # no scored prompt in it
    assert fact_accuracy(["a"], FactTargets(values=("",))) == {}


def test_facts_run_reports_fact_accuracy_per_subset(tmp_path, tmp_path_factory):
    from tests.test_client_app import run_fedsem

    _, run_log, _ = run_fedsem(
        tmp_path,
        tmp_path_factory.mktemp("models"),
        ["tiny-llama"] * 3,
        rounds=1,
        **{
            "data.name": "facts",
            "data.facts-entities": 3,  # one person per client, 9 facts
            "data.facts-public-coverage": 0.5,
            "data.partitioner": "category",
            "eval.num-prompts": 0,
        },
    )

    keys = [p.FACT_ACCURACY] + [f"{p.FACT_ACCURACY}-{s}" for s in p.FACT_SUBSETS]
    for row in run_log.rows:
        assert all(0.0 <= row[k] <= 1.0 for k in keys)
        assert (
            row[f"{p.FACT_ACCURACY}-low"] <= row[p.FACT_ACCURACY] <= row[f"{p.FACT_ACCURACY}-high"]
        )
    clients = [json.loads(line) for line in (run_log.folder / "clients.jsonl").open()]
    evaluated = [c for c in clients if c["phase"] == "evaluate"]
    assert len(evaluated) == 6 and all(k in c for c in evaluated for k in keys)


def test_comparison_shows_fact_columns_only_where_measured():
    from fedsem_app.tools.comparison import RunRecord, markdown_table, table_row

    facts = RunRecord(
        "local",
        rows=[
            {"round": 0, "nll": 3.0, "fact-accuracy": 0.0},
            {"round": 1, "nll": 2.0, "fact-accuracy": 0.25, "fact-accuracy-own": 0.75},
        ],
    )
    plain = RunRecord("local", rows=[{"round": 0, "nll": 3.0}, {"round": 1, "nll": 2.0}])

    row = table_row(facts)
    with_facts = markdown_table([row, table_row(plain)]).splitlines()
    without = markdown_table([table_row(plain)]).splitlines()

    assert row["fact-accuracy-final"] == 0.25 and row["fact-accuracy-own-final"] == 0.75
    assert "fact-accuracy-covered-final" not in row  # not measured: no value, not 0
    assert "| NLL best | fact acc. final | fact acc. own final | bytes total |" in with_facts[0]
    assert "| 2.000 | 2.000 | 0.250 | 0.750 |" in with_facts[2]
    assert "| 2.000 | 2.000 | – | – |" in with_facts[3]
    assert "fact acc." not in without[0]


def test_test_record_of_values_without_fact_ids_has_no_subsets():
    records = [QAPair(i, f"q{i}", f"a{i}", "c", value=f"v{i}") for i in range(10)]
    split = split_dataset(records, 0.2, 0.3, 0)

    record = build_test_record(split)

    assert list(record[p.VALUES]) == [q.value for q in split.test]
    assert p.FACTS not in record and p.COVERED not in record


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not on PATH")
def test_facts_profile_runs_through_fedsem_compare(tmp_path, flwr_env, monkeypatch):
    from fedsem_app.tools.compare import main as compare_main
    from fedsem_app.tools.compare import read_profile, run_config_text

    for key in ("FLWR_HOME", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT"):
        monkeypatch.setenv(key, flwr_env[key])
    # conf/facts.toml shrunk to tiny models, 3 people and one short round.
    shared, _ = read_profile(ROOT / "conf" / "facts.toml")
    shared.update(
        {
            "model.names": "tiny-llama",
            "num-server-rounds": 1,
            "train.local-steps": 2,
            "gen.max-new-tokens": 8,
            "data.facts-entities": 3,
            "data.facts-public-coverage": 0.5,
            "fedsem.prompts-per-round": 9,
        }
    )
    profile = tmp_path / "facts.toml"
    profile.write_text(
        run_config_text(shared)
        + '[compare]\nstrategies = ["local", "fedsem"]\nfederation-config = "num-supernodes=3"\n'
    )
    out = tmp_path / "out"

    code = compare_main([str(profile), "--out", str(out)])

    assert code == 0, (out / "comparison.md").read_text()
    with open(out / "comparison.csv") as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"local", "fedsem"}
    for row in rows.values():
        assert row["status"] == "ok"
        for subset in ("", "-covered", "-uncovered", "-own", "-other"):
            assert 0 <= float(row[f"fact-accuracy{subset}-final"]) <= 1
