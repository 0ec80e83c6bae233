"""Question-answer records and where they come from: packaged, file or hub datasets.

Shared: the server loads the dataset for its split, a client for its partition or
its own node-local file.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import DataConfig
from fedsem_app.registry import Registry

DEFAULT_CATEGORY = "all"


@dataclass(frozen=True)
class QAPair:
    """One prompt with its reference answer.

    Attributes
    ----------
    id
        Stable integer id: the row's position in the source dataset.
    prompt, answer
        The texts; ``answer`` is ``""`` for public prompts.
    category
        Topic label used by the non-IID partitioners (``"all"`` when the data has none).
    role
        The row's fixed part of the split (one of :data:`ROLES`), or ``""`` where the
        split is drawn at random (see :func:`fedsem_app.data.split.split_dataset`).
    value
        The short value a right answer contains (``fact-accuracy``), ``""`` if none.
    fact
        Id shared by the rows that ask the same fact in different phrasings, ``""``
        if none: a test fact is *covered* when a public prompt asks it too.

    """

    id: int
    prompt: str
    answer: str
    category: str
    role: str = ""
    value: str = ""
    fact: str = ""


# Values of data.role-field: training data, public prompt (answer dropped), test question.
PRIVATE, PUBLIC, TEST = "private", "public", "test"
ROLES = (PRIVATE, PUBLIC, TEST)


DatasetLoader = Callable[[DataConfig], list[QAPair]]
# data.name: a registered dataset, else a hub dataset name (so no closed check). The
# generated facts dataset registers itself in its module, imported on the first lookup.
DATASETS: Registry[DatasetLoader] = Registry("dataset", modules=["fedsem_app.data.facts"])


@DATASETS.register("construction-faq")
def _construction_faq(cfg: DataConfig) -> list[QAPair]:
    """Load the packaged English construction FAQ (503 pairs, 39 categories); works offline."""
    import zaragoza_construction_faq

    rows = zaragoza_construction_faq.load(lang="en")
    return _to_pairs(rows, prompt_field="q", answer_field="a", category_field="category")


def rows_to_pairs(rows: Any) -> list[QAPair]:
    """Pairs from rows that use the default field names, roles included (generated data)."""
    return _to_pairs(
        rows,
        prompt_field="prompt",
        answer_field="answer",
        category_field="category",
        role_field="role",
        value_field="value",
        fact_field="fact",
    )


# File suffix -> `datasets` builder name.
FILE_FORMATS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


def load_records(cfg: DataConfig) -> list[QAPair]:
    """Load the configured dataset as question-answer pairs.

    ``cfg.path`` wins over ``cfg.name``. A name in :data:`DATASETS` uses its
    registered loader; any other name is tried as a hub dataset (``train`` split)
    with the configured field mapping.

    Parameters
    ----------
    cfg
        Dataset name or local path and the field mapping.

    Returns
    -------
    list[QAPair]
        Rows with a non-empty prompt and answer (public rows of a file with a role
        field may lack the answer), in source order.

    Raises
    ------
    ConfigError
        When the file or dataset cannot be read or lacks a mapped field; the
        message names the key and the fix.

    """
    if cfg.path:
        return _load_file(cfg.path, cfg, key="data.path")
    if cfg.name in DATASETS:
        return DATASETS[cfg.name](cfg)
    return _load_hub(cfg)


def load_node_private(path: str, cfg: DataConfig) -> list[QAPair]:
    """Read a node's own private data file; every row is that node's private data.

    Parameters
    ----------
    path
        A local JSON/JSONL/CSV/Parquet file (the node config's ``data-path``).
    cfg
        Supplies the field mapping.

    Returns
    -------
    list[QAPair]
        All rows with a non-empty prompt and answer (no split, no partition); where
        the file has the ``data.role-field`` column, only its private rows.

    """
    pairs = _load_file(path, cfg, key="data-path", roles_optional=True)
    return [q for q in pairs if q.role in ("", PRIVATE)]


def _load_file(
    path: str, cfg: DataConfig, *, key: str, roles_optional: bool = False
) -> list[QAPair]:
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ConfigError(
            key,
            f"cannot read {str(file)!r}: unknown suffix {suffix!r}; "
            f"use one of {', '.join(sorted(FILE_FORMATS))}",
        )
    if not file.is_file():
        raise ConfigError(key, f"file {str(file)!r} does not exist; give an existing file")
    try:
        table = datasets.load_dataset(FILE_FORMATS[suffix], data_files=str(file), split="train")
    except Exception as exc:  # datasets raises many types for malformed or empty files
        raise ConfigError(
            key,
            f"could not read {str(file)!r} as {FILE_FORMATS[suffix]} ({type(exc).__name__}: "
            f"{exc}); check that the file is non-empty and well-formed",
        ) from exc
    if roles_optional and cfg.role_field not in table.column_names:
        cfg = dataclasses.replace(cfg, role_field="")
    pairs = _map_fields(table, cfg, source=f"file {str(file)!r}")
    if not pairs:
        raise ConfigError(
            key,
            f"{str(file)!r} has no row with a non-empty prompt and answer; "
            "check the file and the data.prompt-field / data.answer-field mapping",
        )
    return pairs


def _load_hub(cfg: DataConfig) -> list[QAPair]:
    try:
        table = datasets.load_dataset(cfg.name, split="train")
    except Exception as exc:  # offline, unknown name, no train split, ...
        close = difflib.get_close_matches(cfg.name, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            "data.name",
            f"{cfg.name!r} is not a registered dataset{hint} and could not be loaded from "
            f"the hub ({type(exc).__name__}: {exc}). Registered names: "
            f"{', '.join(sorted(DATASETS))}. Hub names need hub access; put local "
            "JSON/JSONL/CSV/Parquet files in data.path instead.",
        ) from exc
    return _map_fields(table, cfg, source=f"hub dataset {cfg.name!r}")


def _map_fields(table: datasets.Dataset, cfg: DataConfig, *, source: str) -> list[QAPair]:
    columns = list(table.column_names)
    for key, name in (
        ("data.prompt-field", cfg.prompt_field),
        ("data.answer-field", cfg.answer_field),
    ):
        if name not in columns:
            raise ConfigError(
                key,
                f"field {name!r} is not in {source}; its columns are {columns}. "
                f"Set {key} to one of them.",
            )
    if cfg.role_field and cfg.role_field not in columns:
        raise ConfigError(
            "data.role-field",
            f"field {cfg.role_field!r} is not in {source}; its columns are {columns}. "
            "Set data.role-field to the column that holds private / public / test, "
            'or to "" for a random split.',
        )
    # Missing category, value or fact columns are fine: one category, no fact metrics.
    return _to_pairs(
        table,
        prompt_field=cfg.prompt_field,
        answer_field=cfg.answer_field,
        category_field=cfg.category_field if cfg.category_field in columns else None,
        role_field=cfg.role_field or None,
        value_field=cfg.value_field if cfg.value_field in columns else None,
        fact_field=cfg.fact_field if cfg.fact_field in columns else None,
    )


def _to_pairs(
    rows: Any,
    *,
    prompt_field: str,
    answer_field: str,
    category_field: str | None,
    role_field: str | None = None,
    value_field: str | None = None,
    fact_field: str | None = None,
) -> list[QAPair]:
    """Convert mapping rows to pairs, dropping rows with an empty prompt or answer.

    Public rows of a file with a role field keep an empty answer (it is dropped
    anyway). Ids are source row positions, so they stay stable when rows are dropped.

    Raises
    ------
    ConfigError
        A row whose role is not one of :data:`ROLES` (named by its position).
    """
    pairs = []
    for position, row in enumerate(rows):
        prompt = _text(row.get(prompt_field))
        answer = _text(row.get(answer_field))
        role = _text(row.get(role_field)).lower() if role_field else ""
        if role_field and role not in ROLES:
            raise ConfigError(
                "data.role-field",
                f"row {position} (0-based) has {role_field}={_text(row.get(role_field))!r}; "
                f"allowed values: {', '.join(ROLES)}. Fix the row or drop it.",
            )
        if not prompt or not (answer or role == PUBLIC):
            continue
        category = _text(row.get(category_field)) if category_field else ""
        pairs.append(
            QAPair(
                position,
                prompt,
                answer,
                category or DEFAULT_CATEGORY,
                role=role,
                value=_text(row.get(value_field)) if value_field else "",
                fact=_text(row.get(fact_field)) if fact_field else "",
            )
        )
    return pairs


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()
