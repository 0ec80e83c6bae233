import json

import datasets
import pytest

from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import DataConfig
from fedsem_app.data.partition import load_partition, partition_private
from fedsem_app.data.records import QAPair, load_node_private, load_records
from fedsem_app.data.split import load_split, split_dataset


@pytest.fixture(scope="module")
def faq() -> list[QAPair]:
    return load_records(DataConfig())


@pytest.fixture(scope="module")
def pool(faq) -> tuple[QAPair, ...]:
    return split_dataset(faq, 0.1, 0.3, seed=42).private


def make_records(n: int) -> list[QAPair]:
    return [QAPair(i, f"q{i}", f"a{i}", f"c{i % 3}") for i in range(n)]


# --- loading ----------------------------------------------------------------


def test_packaged_dataset_loads_all_rows(faq):
    assert len(faq) == 503
    assert all(r.prompt and r.answer and r.category for r in faq)
    # ids are row positions: unique and in order
    assert [r.id for r in faq] == list(range(503))
    assert len({r.category for r in faq}) == 39


ROWS = [
    {"question": "How deep?", "reply": "Two metres.", "topic": "ground"},
    {"question": "Which paint?", "reply": "Silicate paint.", "topic": "facade"},
    {"question": "", "reply": "dropped: empty prompt", "topic": "facade"},
    {"question": "What permit?", "reply": "A bygglov.", "topic": "permits"},
]
MAPPING = {"prompt_field": "question", "answer_field": "reply", "category_field": "topic"}
EXPECTED = [
    QAPair(0, "How deep?", "Two metres.", "ground"),
    QAPair(1, "Which paint?", "Silicate paint.", "facade"),
    QAPair(3, "What permit?", "A bygglov.", "permits"),
]


def write_rows(path, fmt):
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    else:
        table = datasets.Dataset.from_list(ROWS)
        (table.to_csv if fmt == "csv" else table.to_parquet)(str(path))


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_file_with_custom_fields(tmp_path, fmt):
    # Prepare
    path = tmp_path / f"qa.{fmt}"
    write_rows(path, fmt)
    # Execute
    records = load_records(DataConfig(path=str(path), **MAPPING))
    # Assert: the empty-prompt row is dropped, ids keep the source positions
    assert records == EXPECTED


def test_missing_category_field_gives_one_category(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_rows(path, "jsonl")
    records = load_records(DataConfig(path=str(path), **{**MAPPING, "category_field": "nope"}))
    assert {r.category for r in records} == {"all"}


def test_node_private_file_is_read_whole(tmp_path):
    path = tmp_path / "node.jsonl"
    write_rows(path, "jsonl")
    assert load_node_private(str(path), DataConfig(**MAPPING)) == EXPECTED


def test_missing_answer_field_names_field_file_and_columns(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_rows(path, "jsonl")
    with pytest.raises(ConfigError) as err:
        load_records(DataConfig(path=str(path), prompt_field="question", answer_field="answer"))
    assert err.value.key == "data.answer-field"
    message = str(err.value)
    assert "'answer'" in message and "qa.jsonl" in message and "reply" in message


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.parquet", "empty.json"])
def test_empty_file_raises(tmp_path, name):
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(ConfigError) as err:
        load_records(DataConfig(path=str(path)))
    assert err.value.key == "data.path"


def test_unknown_suffix_raises_with_supported_list(tmp_path):
    path = tmp_path / "qa.txt"
    path.write_text("q,a\n")
    with pytest.raises(ConfigError, match=r"\.jsonl") as err:
        load_records(DataConfig(path=str(path)))
    assert err.value.key == "data.path"


def test_unknown_name_without_hub_points_to_data_path(monkeypatch):
    # datasets reads HF_HUB_OFFLINE at import time, so patch its flag as well
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as err:
        load_records(DataConfig(name="no-such-org/no-such-dataset"))
    assert err.value.key == "data.name"
    assert "data.path" in str(err.value) and "construction-faq" in str(err.value)


# --- split ------------------------------------------------------------------


def test_split_sizes_by_hand(faq):
    # round(503 * 0.1) = round(50.3) = 50; round(503 * 0.3) = round(150.9) = 151;
    # private = 503 - 50 - 151 = 302
    split = split_dataset(faq, 0.1, 0.3, seed=42)
    assert (len(split.test), len(split.public), len(split.private)) == (50, 151, 302)


def test_split_small_dataset_keeps_every_part_non_empty():
    # n = 4: round(2.0) = 2 test, round(2.0) = 2 public would leave 0 private;
    # public shrinks to 4 - 2 - 1 = 1
    split = split_dataset(make_records(4), 0.5, 0.5, seed=0)
    assert (len(split.test), len(split.public), len(split.private)) == (2, 1, 1)


def test_split_is_deterministic_disjoint_and_drops_public_answers(faq):
    a = split_dataset(faq, 0.1, 0.3, seed=42)
    b = split_dataset(faq, 0.1, 0.3, seed=42)
    c = split_dataset(faq, 0.1, 0.3, seed=7)
    ids = {part: [r.id for r in getattr(a, part)] for part in ("test", "public", "private")}
    assert a == b
    assert [r.id for r in c.test] != ids["test"]
    all_ids = ids["test"] + ids["public"] + ids["private"]
    assert sorted(all_ids) == list(range(503))  # disjoint and covering
    assert all(r.answer == "" for r in a.public)
    assert all(r.answer for r in a.test + a.private)


def test_load_split_matches_split_dataset(faq):
    assert load_split(DataConfig(), seed=3) == split_dataset(faq, 0.1, 0.3, seed=3)


# --- partition --------------------------------------------------------------


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "category"])
def test_partitions_are_disjoint_covering_and_deterministic(pool, partitioner):
    parts = [partition_private(pool, partitioner, 3, i, seed=42) for i in range(3)]
    again = [partition_private(pool, partitioner, 3, i, seed=42) for i in range(3)]
    ids = [{r.id for r in part} for part in parts]
    assert parts == again
    assert sum(len(s) for s in ids) == len(pool)  # disjoint ...
    assert set().union(*ids) == {r.id for r in pool}  # ... and covering


def test_iid_sizes_by_hand(pool):
    # 302 rows in 3 contiguous shards: 101, 101, 100
    assert [len(partition_private(pool, "iid", 3, i)) for i in range(3)] == [101, 101, 100]


def test_category_partitions_own_disjoint_categories(pool):
    cats = [{r.category for r in partition_private(pool, "category", 3, i)} for i in range(3)]
    assert not (cats[0] & cats[1] or cats[0] & cats[2] or cats[1] & cats[2])
    assert set().union(*cats) == {r.category for r in pool}


@pytest.mark.parametrize("partitioner", ["dirichlet", "category"])
@pytest.mark.parametrize("num_partitions", [2, 5, 8])
def test_every_partition_non_empty_on_packaged_data(pool, partitioner, num_partitions):
    sizes = [
        len(partition_private(pool, partitioner, num_partitions, i, alpha=0.5, seed=42))
        for i in range(num_partitions)
    ]
    assert min(sizes) > 0 and sum(sizes) == len(pool)


def test_too_many_partitions_for_category_raises():
    records = make_records(30)  # 3 categories
    with pytest.raises(ConfigError, match="dirichlet") as err:
        partition_private(records, "category", 4, 0)
    assert err.value.key == "data.partitioner"


def test_unknown_partitioner_and_bad_partition_id_raise():
    with pytest.raises(ConfigError):
        partition_private(make_records(10), "shards", 2, 0)
    with pytest.raises(ConfigError):
        partition_private(make_records(10), "iid", 2, 2)


def test_load_partition_is_partition_of_the_split(pool):
    cfg = DataConfig(partitioner="category")
    assert load_partition(cfg, 42, 3, 1) == partition_private(pool, "category", 3, 1)
