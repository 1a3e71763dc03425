"""Song-level metrics against hand-computed values, the absent-label case, and the
optimisation schedule / early-stopping rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audiocnn.training.config import config_from_mapping
from audiocnn.training.metrics import compute_metrics, summary, to_multi_hot
from audiocnn.training.schedule import EarlyStopping, LRSchedule, is_better


def test_multi_label_by_hand():
    # label a: positives score 0.9, 0.4; negatives 0.2, 0.6 -> 3 of 4 pairs ordered: ROC-AUC .75
    #   ranking 0.9(+) 0.6(-) 0.4(+) 0.2(-): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # label b: positives 0.8, 0.7; negatives 0.1, 0.3 -> perfect: ROC-AUC 1, AP 1
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.7], [0.6, 0.3]])
    m = compute_metrics(y, s, "multi-label", ["a", "b"])
    assert m["per_tag"][0]["roc_auc"] == pytest.approx(0.75)
    assert m["per_tag"][0]["pr_auc"] == pytest.approx(5 / 6)
    assert m["per_tag"][1]["roc_auc"] == pytest.approx(1.0)
    assert m["roc_auc_macro"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["pr_auc_macro"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert m["n_clips"] == 4 and m["excluded_labels"] == []
    # micro: pool all 8 (target, score) pairs: positives .9 .4 .8 .7, negatives .2 .6 .1 .3
    # ordered pairs: .9>4, .4>3 (.2 .1 .3), .8>4, .7>4 -> 15/16
    assert m["roc_auc_micro"] == pytest.approx(15 / 16)
    assert "accuracy" not in m


def test_matches_sklearn_macro():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random((40, 6)) < 0.3).astype(int)
    y[0], y[1] = 1, 0  # every label has both classes
    s = rng.random((40, 6))
    m = compute_metrics(y, s, "multi-label", list("abcdef"))
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, s, average="macro"))
    assert m["pr_auc_macro"] == pytest.approx(average_precision_score(y, s, average="macro"))
    assert m["roc_auc_micro"] == pytest.approx(roc_auc_score(y, s, average="micro"))


def test_absent_and_always_present_labels_are_reported_not_fatal():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    s = np.array([[0.9, 0.5, 0.1], [0.2, 0.4, 0.2], [0.7, 0.3, 0.3], [0.1, 0.2, 0.4]])
    m = compute_metrics(y, s, "multi-label", ["a", "b", "c"])
    assert m["roc_auc_macro"] == pytest.approx(1.0)  # only label a is scored
    assert m["n_labels_scored"] == 1
    assert m["excluded_labels"] == [
        {"label": "b", "reason": "absent from the split"},
        {"label": "c", "reason": "positive in every clip"},
    ]
    assert m["per_tag"][1]["roc_auc"] is None and m["per_tag"][1]["n_positive"] == 0


def test_no_label_scorable_gives_nan_not_crash():
    y = np.zeros((3, 2))
    m = compute_metrics(y, np.full((3, 2), 0.5), "multi-label", ["a", "b"])
    assert math.isnan(m["roc_auc_macro"]) and math.isnan(m["roc_auc_micro"])
    assert len(m["excluded_labels"]) == 2


def test_single_label_by_hand():
    labels = ["x", "y", "z"]
    targets = np.array([0, 0, 1, 1, 2, 0])
    scores = np.array(
        [
            [0.8, 0.1, 0.1],  # 0 -> 0 ok
            [0.3, 0.6, 0.1],  # 0 -> 1
            [0.2, 0.7, 0.1],  # 1 -> 1 ok
            [0.1, 0.8, 0.1],  # 1 -> 1 ok
            [0.2, 0.2, 0.6],  # 2 -> 2 ok
            [0.5, 0.1, 0.4],  # 0 -> 0 ok
        ]
    )
    m = compute_metrics(targets, scores, "single-label", labels)
    assert m["accuracy"] == pytest.approx(5 / 6)
    # recalls: x 2/3, y 1, z 1 -> balanced 8/9
    assert m["balanced_accuracy"] == pytest.approx(8 / 9)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 0, 1]]
    # one-vs-rest ROC-AUC of class z: positive .6 above all five negatives -> 1
    assert m["per_tag"][2]["roc_auc"] == pytest.approx(1.0)
    from sklearn.metrics import roc_auc_score

    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(to_multi_hot(targets, 3), scores, average="macro"))


def test_single_label_class_absent_from_split():
    m = compute_metrics(
        np.array([0, 1, 0]),
        np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]]),
        "single-label",
        ["x", "y", "z"],
    )
    assert m["excluded_labels"] == [{"label": "z", "reason": "absent from the split"}]
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0  # over the classes present
    assert m["confusion_matrix"][2] == [0, 0, 0]
    assert set(summary(m)) >= {"roc_auc_macro", "pr_auc_macro", "accuracy", "balanced_accuracy", "n_clips"}


# -- schedules ---------------------------------------------------------------------------


def _schedule(**kw):
    cfg = config_from_mapping({"dataset": "d", "model": "m", "lr": 0.1, "epochs": 10, **kw})
    return cfg, LRSchedule(cfg, higher_is_better=True)


def test_plateau_drops_after_patience_and_restores_best():
    _, s = _schedule(schedule={"name": "plateau", "factor": 0.5, "patience": 2, "restore_best": True})
    acts = [s.after_epoch(e, v) for e, v in enumerate([0.5, 0.6, 0.6, 0.55, 0.7, 0.6, 0.6])]
    lrs = [a.lr for a in acts]
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    assert [a.reload_best for a in acts] == [False, False, False, True, False, False, True]
    assert s.lr_at_epoch_start(7) == 0.025


def test_skip_schedule_switches_to_sgd_stages():
    _, s = _schedule(
        optimizer="adam", schedule={"name": "skip", "adam_epochs": 3, "sgd_epochs": 2, "sgd_lrs": [0.01, 0.001]}
    )
    acts = [s.after_epoch(e, 0.5) for e in range(9)]
    assert [a.new_optimizer for a in acts] == [None, None, "sgd", None, None, None, None, None, None]
    assert [a.lr for a in acts] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 0.001]
    assert [a.reload_best for a in acts].count(True) == 2
    assert s.optimizer_name == "sgd"


def test_schedule_state_round_trip():
    _, a = _schedule(schedule={"name": "plateau", "patience": 1})
    for e, v in enumerate([0.5, 0.4, 0.3]):
        a.after_epoch(e, v)
    _, b = _schedule(schedule={"name": "plateau", "patience": 1})
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert a.after_epoch(3, 0.2).lr == b.after_epoch(3, 0.2).lr


def test_cosine_step_and_warmup():
    _, s = _schedule(schedule={"name": "cosine", "min_lr": 0.0})
    assert s.lr_at_epoch_start(0) == pytest.approx(0.1)
    assert s.lr_at_epoch_start(5) == pytest.approx(0.05)
    assert s.lr_at_epoch_start(10) == pytest.approx(0.0)
    _, s = _schedule(schedule={"name": "step", "step_epochs": 3, "factor": 0.1, "warmup_epochs": 1})
    assert s.lr_at_epoch_start(0) == pytest.approx(0.05)  # warm-up: base * 1/2
    assert [round(s.lr_at_epoch_start(e), 6) for e in (1, 3, 4)] == [0.1, 0.1, 0.01]


def test_early_stopping_and_nan():
    es = EarlyStopping(patience=2, min_delta=0.01, higher_is_better=False)
    assert [es.update(v) for v in [1.0, 0.995, 0.5, 0.6, 0.7]] == [False, False, False, False, True]
    assert not is_better(float("nan"), None, True)
    assert is_better(0.1, None, True) and is_better(0.1, 0.2, False)
    es = EarlyStopping(patience=1, min_delta=0, higher_is_better=True, enabled=False)
    assert not es.update(0.1) and not es.update(0.0)
