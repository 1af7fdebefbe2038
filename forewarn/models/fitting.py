"""How every Forewarn model is fitted: standardized features into a logistic regression,
whose numbers leave scikit-learn as a ``LinearModel`` (plain numbers, loaded without running
code), and the calibration table its card records."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from forewarn.models.features import CONTACT_FEATURES
from forewarn.models.risk import CalibrationBin, HeldOutMetrics, LinearModel


def logistic_pipeline(max_iter: int = 2000) -> Pipeline:
    """Every Forewarn model's shape: standardized features into a logistic regression (its
    numbers leave scikit-learn as a ``LinearModel``)."""
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=max_iter))])


#: the smallest standard deviation a feature is scaled by: a count that is nearly always 0 in
#: the sample would otherwise turn a single occurrence into tens of deviations, and a
#: confident, wrong risk
MIN_SCALE = 0.5
#: the inverse of the L2 penalty (scikit-learn's C): the sample is small and shifts daily
REGULARIZATION_C = 0.1


def fit_linear(
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    w: NDArray[np.float64] | None = None,
    features: Sequence[str] = CONTACT_FEATURES,
) -> LinearModel:
    """A weighted logistic regression on standardized features, as plain numbers: the
    contact-risk model's fit, offline (``forewarn train --target contact``) and in the
    stream (``forewarn learn``)."""
    w = np.ones(len(y)) if w is None else w
    mean = np.average(x, axis=0, weights=w)
    scale = np.maximum(np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w)), MIN_SCALE)
    clf = LogisticRegression(C=REGULARIZATION_C, max_iter=1000)
    clf.fit((x - mean) / scale, y, sample_weight=w)
    return LinearModel(
        features=list(features),
        mean=[float(v) for v in mean],
        scale=[float(v) for v in scale],
        coef=[float(v) for v in clf.coef_[0]],
        intercept=float(clf.intercept_[0]),
    )


def calibration_bins(y: NDArray[np.int64], p: NDArray[np.float64]) -> list[CalibrationBin]:
    bins = []
    edges = np.linspace(0, 1, 11)
    for lo, hi in itertools.pairwise(edges):
        mask = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if mask.any():
            bins.append(
                CalibrationBin(
                    lower=round(float(lo), 2),
                    upper=round(float(hi), 2),
                    predicted=round(float(p[mask].mean()), 4),
                    observed=round(float(y[mask].mean()), 4),
                    n=int(mask.sum()),
                )
            )
    return bins


def held_out_metrics(
    y_fit: NDArray[np.int64],
    p_fit: NDArray[np.float64],
    y: NDArray[np.int64],
    p: NDArray[np.float64],
) -> HeldOutMetrics:
    """A card's held-out figures: ranking, Brier score and calibration on the held-out rows
    (``y``, ``p``), and precision and recall there at the operating threshold, the one with
    the best F1 on the rows the model was fitted on (``y_fit``, ``p_fit``)."""
    prec, rec, thr = precision_recall_curve(y_fit, p_fit)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    threshold = float(thr[int(np.argmax(f1))])
    flagged = p >= threshold
    hits = int((flagged & (y == 1)).sum())
    return HeldOutMetrics(
        roc_auc=round(float(roc_auc_score(y, p)), 4),
        pr_auc=round(float(average_precision_score(y, p)), 4),
        brier=round(float(brier_score_loss(y, p)), 5),
        calibration=calibration_bins(y, p),
        operating_threshold=round(threshold, 4),
        precision=round(hits / max(1, int(flagged.sum())), 4),
        recall=round(hits / max(1, int((y == 1).sum())), 4),
        rows=len(y),
    )
