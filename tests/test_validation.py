import math

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.strategies.validation import check_answers, check_metrics


def reply(ids, texts, confs):
    return RecordDict({p.ANSWERS: ConfigRecord({p.IDS: ids, p.TEXTS: texts, p.CONFIDENCES: confs})})


def test_good_reply_is_fully_valid():
    answers, reason = check_answers(reply([3, 9], ["a", "b"], [-0.5, -1.0]), [3, 9], 100)
    assert reason is None
    assert answers.texts == ["a", "b"]
    assert answers.valid.tolist() == [True, True]
    np.testing.assert_allclose(answers.confidences, [-0.5, -1.0])


def test_wrong_count_rejects_reply():
    answers, reason = check_answers(reply([3], ["a"], [-0.5]), [3, 9], 100)
    assert answers is None
    assert reason == "returned 1 texts for 2 prompts"


def test_wrong_ids_reject_reply():
    answers, reason = check_answers(reply([9, 3], ["a", "b"], [-1.0, -1.0]), [3, 9], 100)
    assert answers is None and "ids" in reason


def test_missing_record_rejects_reply():
    answers, reason = check_answers(RecordDict(), [1], 100)
    assert answers is None and p.ANSWERS in reason


def test_bad_single_answers_are_masked_not_the_reply():
    texts = ["ok", "   ", "x" * 11, "fine"]
    confs = [-0.1, -0.2, -0.3, math.nan]
    answers, reason = check_answers(reply([1, 2, 3, 4], texts, confs), [1, 2, 3, 4], 10)
    assert reason is None
    assert answers.valid.tolist() == [True, False, False, False]
    assert answers.texts == ["ok", "", "", ""]
    assert answers.confidences.tolist() == [np.float32(-0.1), 0.0, 0.0, 0.0]
    assert answers.problems == [
        "prompt 2: empty answer",
        "prompt 3: answer of 11 chars exceeds 10",
        "prompt 4: non-finite confidence",
    ]


def test_metrics_checks():
    good = RecordDict({p.METRICS: MetricRecord({p.NUM_EXAMPLES: 3, p.TRAIN_LOSS: 1.5})})
    assert check_metrics(good, [p.NUM_EXAMPLES, p.TRAIN_LOSS]) is None
    assert "miss train-loss" in check_metrics(
        RecordDict({p.METRICS: MetricRecord({p.NUM_EXAMPLES: 3})}), [p.TRAIN_LOSS]
    )
    assert "not finite" in check_metrics(
        RecordDict({p.METRICS: MetricRecord({p.NUM_EXAMPLES: 3, p.TRAIN_LOSS: math.inf})}), []
    )
    assert "positive" in check_metrics(
        RecordDict({p.METRICS: MetricRecord({p.NUM_EXAMPLES: 0})}), []
    )
    assert "no MetricRecord" in check_metrics(RecordDict(), [])
