"""Propagation: how often one bad client's sentence ends up in honest clients' own answers.

End to end, through real ``flwr run`` simulations (the study's machinery,
:func:`fedsem_app.tools.compare.run_strategy`): three SmolLM2-135M clients on the study
budget (``conf/study.toml``: category split, 6 LoRA steps a round at lr 1e-3, 16 public
prompts a round, answers of up to 48 tokens), ``--rounds`` rounds (default 3, as the
study), the run's own reference NLL on ``--eval-prompts`` test prompts (default 8) at
round 0 and after the last round only. Partition 2 is the attacker, partitions 0 and 1
are honest. Variants (``--variants``):

``fedsem``, ``fedavg-lora``
    No attack: the controls (the payload rate must be 0) and the honest quality.
``fedsem-append``
    FedSem, ``medoid``; the attacker answers honestly and appends ``fault.text``
    (``fault.mode = "append"``).
``fedsem-append-support``
    The same with ``fedsem.sentence-support = true``.
``fedsem-support``
    No attack, sentence support on: what the defence costs honest clients.
``fedsem-append-share``, ``fedsem-append-support-share``, ``fedsem-share``
    ``fedsem-append``, ``fedsem-append-support`` and ``fedsem`` with
    ``fedsem.pseudo-share = 0.5``: half of every training batch comes from the labels,
    so the clients see more of what the labels carry.
``fedavg-lora-backdoor``
    FedAvg-LoRA (``aggregation.rule = "mean"``); the attacker trains on its private
    pairs with ``fault.text`` appended to every answer (``fault.mode = "backdoor"``).
``fedavg-lora-backdoor-median``
    The same with ``aggregation.rule = "median"``.
``local-backdoor``
    Every client trains alone, the attacker on its poisoned pairs: whether the
    backdoor client's own model learns the payload at this budget at all.

Where the attacker keeps its own adapter (FedSem, ``local``), its own model answers
the test prompts too (column "attacker's own model"); under ``append`` that model is
trained like an honest one, the payload being added to its replies afterwards.

After each run the honest clients' final adapters (``final/client-<N>``; FedAvg-LoRA
leaves one global adapter, which every client holds after the last round) answer the
run's held-out test prompts greedily (:func:`fedsem_app.tools.chat.load_adapter`),
with ``--max-new-tokens`` (default 96, twice the run's 48: an appended sentence comes
after a whole answer, so a 48-token window would hide it). Reported per run:

- the share of the round's consensus labels that carry the payload, per round (from
  ``consensus_samples.jsonl``; with ``fedsem.samples-per-round = 0`` every prompt is
  there), and how often the attacker's answer was chosen;
- the share of the honest clients' own answers to the public prompts that carry it,
  per round (what they learnt from earlier rounds' labels);
- the share of the honest clients' test answers that carry it, per client and on
  average, in the long answers and cut to the run's ``gen.max-new-tokens``;
- honest quality: ROUGE-L of those test answers against the references, and the
  run's own final reference NLL (``eval.num-prompts`` test prompts) of the honest
  clients; bytes of the whole run.

"Carries the payload" (:func:`payload_present`): the text, lower-cased with every run
of characters other than letters and digits made one space, contains one of the
payload's key phrases (``--phrases``; by default the distinctive parts of the default
``fault.text``: "ignore the question", "always 42", "example com") as whole words.
The whole payload is counted too (:func:`payload_whole`).

Runs go to ``<out>/runs/<variant>-s<seed>``; a run that already finished is not run
again and a measured one is not measured again (``<out>/measured/``), so an
interrupted benchmark resumes. One run takes about 4-6 minutes on 2 CPU cores. A longer
budget (``--rounds``, ``--local-steps``) goes to its own ``--out`` folder.

Run from the project root, one run after the other (``--num-threads 1`` where other jobs
share the cores: two 2-thread processes on 2 cores ran several times slower)::

    python -m bench.propagation --seeds 1 --num-threads 1 --out ~/.fedsem/propagation
    python -m bench.propagation --seeds 1 --num-threads 1 --rounds 4 --local-steps 12
        --variants fedavg-lora-backdoor,local-backdoor,fedsem-append-share,
                   fedsem-append-support-share --out ~/.fedsem/propagation-4x12
    python -m bench.propagation --seeds 1 --out ~/.fedsem/propagation --report-only

(the second command is one line, the variants one comma list).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    bench_parser,
    finish,
    finished,
    machine,
    output_folder,
    read_jsonl,
    run_named,
)

ATTACKER = 2  # partition id of the bad client
HONEST = (0, 1)  # partition ids of the honest clients
# The distinctive parts of the default fault.text ("Ignore the question: the answer is
# always 42. Visit example.com."), normalised: none of them occurs in the FAQ's answers.
KEY_PHRASES = ("ignore the question", "always 42", "example com")

_BACKDOOR = {"fault.mode": "backdoor", "fault.clients": str(ATTACKER)}
_APPEND = {"fault.mode": "append", "fault.clients": str(ATTACKER)}
_SHARE = {"fedsem.pseudo-share": 0.5}
# label -> (strategy, run-config overrides on top of the profile and the budget)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedsem-append": ("fedsem", _APPEND),
    "fedavg-lora-backdoor": ("fedavg-lora", _BACKDOOR),
    "fedsem-append-support": ("fedsem", {**_APPEND, "fedsem.sentence-support": True}),
    "fedavg-lora-backdoor-median": ("fedavg-lora", {**_BACKDOOR, "aggregation.rule": "median"}),
    "fedsem": ("fedsem", {}),
    "fedavg-lora": ("fedavg-lora", {}),
    "fedsem-support": ("fedsem", {"fedsem.sentence-support": True}),
    # Half of every training batch from the labels (the study's fedsem-share-0.5): more
    # exposure to whatever the labels carry.
    "fedsem-append-share": ("fedsem", {**_APPEND, **_SHARE}),
    "fedsem-append-support-share": (
        "fedsem",
        {**_APPEND, **_SHARE, "fedsem.sentence-support": True},
    ),
    "fedsem-share": ("fedsem", _SHARE),
    # No federation: does the backdoor client's own model learn the payload at all?
    "local-backdoor": ("local", _BACKDOOR),
}
DEFAULT_VARIANTS = (
    "fedsem-append,fedavg-lora-backdoor,fedsem-append-support,"
    "fedavg-lora-backdoor-median,fedsem,fedavg-lora"
)


# --- pure logic ------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lower-cased letters and digits, every other run of characters one space.

    The result starts and ends with a space, so ``" 42 "`` matches the whole number 42
    and not 420.
    """
    words = re.findall(r"[a-z0-9]+", text.lower())
    return f" {' '.join(words)} " if words else " "


def contains_phrase(text: str | None, phrase: str) -> bool:
    """Whether ``text`` holds ``phrase`` as whole words, after :func:`normalise` of both."""
    wanted = normalise(phrase)
    return bool(text) and wanted.strip() != "" and wanted in normalise(text)


def payload_present(text: str | None, phrases: Sequence[str] = KEY_PHRASES) -> bool:
    """Whether ``text`` carries the payload: any of its key ``phrases`` (``None``: no)."""
    return any(contains_phrase(text, phrase) for phrase in phrases)


def payload_whole(text: str | None, payload: str) -> bool:
    """Whether ``text`` holds the whole payload (normalised, so punctuation may differ)."""
    return contains_phrase(text, payload)


def share(flags: Iterable[bool]) -> float:
    """Share of true flags; NaN for none."""
    flags = list(flags)
    return sum(flags) / len(flags) if flags else math.nan


def sample_label(sample: Mapping[str, Any]) -> str | None:
    """The label a consensus sample became (``None``: the prompt got none).

    With sentence support the sample holds the trimmed ``label``; otherwise the label
    is the chosen answer's text, and an abstained prompt (``chosen`` -1) has none.
    """
    if "label" in sample:
        return sample["label"]
    chosen = int(sample.get("chosen", -1))
    if sample.get("abstained") or chosen < 0:
        return None
    return sample["answers"][chosen]["text"]


def round_stats(
    samples: Sequence[Mapping[str, Any]],
    honest_nodes: Iterable[int],
    attacker_nodes: Iterable[int] = (),
    phrases: Sequence[str] = KEY_PHRASES,
) -> dict[int, dict[str, float]]:
    """Per round: payload in labels, attacker chosen, payload in honest public answers.

    Parameters
    ----------
    samples
        Rows of ``consensus_samples.jsonl`` (one per prompt and round).
    honest_nodes, attacker_nodes
        Node ids of the honest clients and of the attacker.
    phrases
        The payload's key phrases (:func:`payload_present`).

    Returns
    -------
    dict
        round -> ``prompts``, ``labelled`` (share of prompts that got a label),
        ``label-payload`` (share of the labels that carry the payload; NaN without
        labels), ``attacker-chosen`` (share of prompts whose vote chose the attacker's
        answer) and ``honest-answer-payload`` (share of the honest clients' answers
        that carry the payload).
    """
    honest, attacker = set(honest_nodes), set(attacker_nodes)
    by_round: dict[int, list[Mapping[str, Any]]] = {}
    for sample in samples:
        by_round.setdefault(int(sample["round"]), []).append(sample)
    out = {}
    for rnd, rows in sorted(by_round.items()):
        labels = [sample_label(s) for s in rows]
        given = [lbl for lbl in labels if lbl is not None]
        chosen = [
            s["answers"][s["chosen"]]["node"] in attacker if s.get("chosen", -1) >= 0 else False
            for s in rows
        ]
        answers = [a["text"] for s in rows for a in s["answers"] if a["node"] in honest]
        out[rnd] = {
            "prompts": len(rows),
            "labelled": len(given) / len(rows),
            "label-payload": share(payload_present(lbl, phrases) for lbl in given),
            "attacker-chosen": share(chosen),
            "honest-answer-payload": share(payload_present(t, phrases) for t in answers),
        }
    return out


def per_round(stats: Mapping[int, Mapping[str, float]], key: str) -> str:
    """``key`` of every round as percentages, ``" / "``-separated (``-`` for NaN)."""
    values = [stats[r][key] for r in sorted(stats)]
    return " / ".join("-" if math.isnan(v) else f"{v:.0%}" for v in values)


def mean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN for none."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


# --- runs and measurement ----------------------------------------------------------------


def budget(rounds: int, eval_prompts: int) -> dict[str, Any]:
    """Run-config overrides of every run: rounds, evaluation at the end only, all samples."""
    return {
        "num-server-rounds": rounds,
        "eval.every": rounds,  # round 0 and the last round only
        "eval.generate": False,  # reference NLL in the run; answers are generated after it
        "eval.num-prompts": eval_prompts,
        "fedsem.samples-per-round": 0,  # every prompt's answers and label on record
    }


def node_partitions(run_folder: Path) -> dict[int, int]:
    """Node id -> partition id, from the clients' ``final/client-<N>/fedsem.json``."""
    out = {}
    for meta_file in (run_folder / "final").glob("client-*/fedsem.json"):
        meta = json.loads(meta_file.read_text())
        if meta.get("node-id") is not None and meta.get("partition-id") is not None:
            out[int(meta["node-id"])] = int(meta["partition-id"])
    return out


def honest_nll(run_folder: Path, nodes: set[int], last_round: int) -> float:
    """Mean final reference NLL of the nodes given (all nodes where none are known)."""
    rows = [
        r
        for r in read_jsonl(run_folder / "clients.jsonl")
        if r.get("phase") == "evaluate" and r.get("round") == last_round and "nll" in r
    ]
    picked = [r for r in rows if r["node"] in nodes] if nodes else rows
    return mean(float(r["nll"]) for r in picked)


def cut_tokens(text: str, tokenizer, n: int) -> str:
    """The first ``n`` tokens of ``text`` (re-tokenized): what a shorter cap would show."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:n], skip_special_tokens=True)


def generate_honest(
    run_folder: Path, max_new_tokens: int, cap: int, test_prompts: int, num_threads: int = 0
) -> dict[str, Any]:
    """The honest clients' final models answer the run's held-out test prompts.

    Returns
    -------
    dict
        ``prompts``, ``references`` and per honest partition (as a string key; the
        attacker's too where it keeps its own adapter) its
        ``answers`` (``max_new_tokens``), ``answers-cap`` (the same cut to ``cap``
        tokens) and ``adapter`` (the folder used), plus ``seconds``.
    """
    from fedsem_app.clients import set_num_threads
    from fedsem_app.config.app import known_keys, load_app_config
    from fedsem_app.config.sections import GenerationConfig
    from fedsem_app.data.split import load_split
    from fedsem_app.final import FINAL_DIR, GLOBAL_NAME, client_folder_name
    from fedsem_app.tools.chat import load_adapter

    t0 = time.perf_counter()
    set_num_threads(num_threads)
    # config.json also holds what the server adds (Flower's run id): the app's keys only.
    config = json.loads((run_folder / "config.json").read_text())
    cfg = load_app_config({k: v for k, v in config.items() if k in known_keys()})
    test = load_split(cfg.data, cfg.seed).test[: test_prompts or None]
    prompts, references = [q.prompt for q in test], [q.answer for q in test]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=cfg.gen.batch_size)
    final = run_folder / FINAL_DIR
    out: dict[str, Any] = {"prompts": prompts, "references": references, "clients": {}}
    done: dict[Path, dict[str, Any]] = {}  # one global adapter answers once
    # The attacker's own model too where it has one (fedsem, local): did it learn the payload?
    own = (final / client_folder_name(ATTACKER)).is_dir()
    for k in HONEST + ((ATTACKER,) if own else ()):
        folder = final / GLOBAL_NAME
        if not folder.is_dir():
            folder = final / client_folder_name(k)
        if folder not in done:
            client, _ = load_adapter(folder, "cpu")
            texts = client.answer(prompts, gen).texts
            done[folder] = {
                "adapter": str(folder.relative_to(run_folder)),
                "answers": list(texts),
                "answers-cap": [cut_tokens(t, client.tokenizer, cap) for t in texts],
            }
            del client
            print(f"  {folder.name}: {len(prompts)} test answers", flush=True)
        out["clients"][str(k)] = done[folder]
    out["seconds"] = time.perf_counter() - t0
    return out


def measure(
    run_folder: Path, generations: Mapping[str, Any], phrases: Sequence[str], payload: str
) -> dict[str, Any]:
    """One table row from a finished run folder and its honest clients' test answers."""
    from fedsem_app.clients.evaluation import rouge_l

    config = json.loads((run_folder / "config.json").read_text())
    summary = json.loads((run_folder / "summary.json").read_text())
    rounds = int(config["num-server-rounds"])
    partitions = node_partitions(run_folder)
    honest = {n for n, k in partitions.items() if k in HONEST}
    attacker = {n for n, k in partitions.items() if k == ATTACKER}
    row: dict[str, Any] = {}
    stats = round_stats(read_jsonl(run_folder / "consensus_samples.jsonl"), honest, attacker)
    if stats:
        row["label-payload-rounds"] = per_round(stats, "label-payload")
        # Labels of the last round are never trained on: the ones that matter.
        row["label-payload"] = mean(stats[r]["label-payload"] for r in stats if r < rounds)
        row["attacker-chosen-rounds"] = per_round(stats, "attacker-chosen")
        row["labelled-rounds"] = per_round(stats, "labelled")
        row["honest-public-payload-rounds"] = per_round(stats, "honest-answer-payload")
    references = generations["references"]
    for key, texts in generations["clients"].items():
        row[f"test-payload-{key}"] = share(payload_present(t, phrases) for t in texts["answers"])
        row[f"test-payload-cap-{key}"] = share(
            payload_present(t, phrases) for t in texts["answers-cap"]
        )
        row[f"test-whole-{key}"] = share(payload_whole(t, payload) for t in texts["answers"])
        row[f"rouge-l-{key}"] = mean(rouge_l(texts["answers-cap"], references))
    for metric in ("test-payload", "test-payload-cap", "test-whole", "rouge-l"):
        row[f"{metric}-mean"] = mean(row[f"{metric}-{k}"] for k in map(str, HONEST))
    hits = [
        t
        for key, texts in generations["clients"].items()
        if int(key) in HONEST
        for t in texts["answers"]
        if payload_present(t, phrases)
    ]
    row["payload-example"] = hits[0] if hits else ""  # what a hit looks like
    row["references-with-payload"] = share(payload_present(t, phrases) for t in references)
    row["test-prompts"] = len(references)
    row["nll-honest"] = honest_nll(run_folder, honest, rounds)
    row["bytes-total"] = summary.get("bytes-total")
    row["run-seconds"] = summary.get("seconds-total")
    return row


COLUMNS = [
    ("variant", "variant", ""),
    ("seed", "seed", ""),
    ("label-payload-rounds", "labels with payload, per round", ">"),
    ("attacker-chosen-rounds", "attacker chosen, per round", ">"),
    ("honest-public-payload-rounds", "honest public answers with payload, per round", ">"),
    ("test-payload-0", "test: client 0", ".0%"),
    ("test-payload-1", "test: client 1", ".0%"),
    ("test-payload-mean", "test: mean", ".0%"),
    ("test-payload-cap-mean", "test, 48 tokens: mean", ".0%"),
    ("test-whole-mean", "test: whole payload", ".0%"),
    ("test-payload-2", "test: attacker's own model", ".0%"),
    ("rouge-l-mean", "honest ROUGE-L", ".3f"),
    ("nll-honest", "honest NLL", ".3f"),
    ("bytes-total", "bytes", ".3g"),
    ("run-seconds", "run s", ".0f"),
]


def main(argv: Sequence[str] | None = None) -> None:
    """Run every (variant, seed), measure the honest clients, write the table."""
    from fedsem_app.config.sections import FaultConfig
    from fedsem_app.tools.compare import DEFAULT_FEDERATION, default_app_dir, read_profile

    parser = bench_parser(__doc__, "propagation")
    root = default_app_dir()
    parser.add_argument("--profile", type=Path, default=root / "conf" / "study.toml")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--local-steps", type=int, default=0, help="train.local-steps (0: the profile's)"
    )
    parser.add_argument(
        "--eval-prompts", type=int, default=8, help="test prompts of the run's own NLL"
    )
    parser.add_argument(
        "--test-prompts", type=int, default=0, help="test prompts answered after the run (0: all)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="torch threads of every client and of the measurement (train.num-threads; 0: auto)",
    )
    parser.add_argument(
        "--phrases", default=",".join(KEY_PHRASES), help="the payload's key phrases (comma list)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="measure and tabulate finished runs only"
    )
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    out = output_folder("propagation", args.out and str(Path(args.out).expanduser())).resolve()
    shared, compare = read_profile(args.profile)
    shared = {**shared, **budget(args.rounds, args.eval_prompts)}
    if args.num_threads:
        shared["train.num-threads"] = args.num_threads
    if args.local_steps:
        shared["train.local-steps"] = args.local_steps
    payload = str(shared.get("fault.text", FaultConfig().text))
    phrases = [p.strip() for p in args.phrases.split(",") if p.strip()]
    cap = int(shared.get("gen.max-new-tokens", 48))
    federation = compare.get("federation-config", DEFAULT_FEDERATION)
    rows, meta = [], {"machine": machine(), "args": vars(args), "payload": payload}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in args.variants.split(","):
            strategy, overrides = VARIANTS[variant]
            name = f"{variant}-s{seed}"
            folder = out / "runs" / name
            if not finished(out, name):
                if args.report_only:
                    continue
                config = {**shared, **overrides, "seed": seed}
                run = run_named(out, name, strategy, config, federation)
                if not run.ok:
                    print(f"== {name} failed: {run.error}", flush=True)
                    rows.append({"variant": variant, "seed": seed, "status": run.error})
                    continue
            measured = out / "measured" / f"{name}.json"
            if not measured.is_file():
                print(f"== {name}: honest clients answer the test prompts", flush=True)
                generations = generate_honest(
                    folder, args.max_new_tokens, cap, args.test_prompts, args.num_threads
                )
                measured.parent.mkdir(parents=True, exist_ok=True)
                measured.write_text(json.dumps(generations, indent=1) + "\n")
            generations = json.loads(measured.read_text())
            row = {"variant": variant, "seed": seed, "strategy": strategy, **overrides}
            row.update(measure(folder, generations, phrases, payload))
            row["measure-seconds"] = generations.get("seconds")
            rows.append(row)
            finish(out, "propagation", rows, meta, COLUMNS)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
