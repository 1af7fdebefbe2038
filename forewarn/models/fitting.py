"""How every Forewarn model is fitted: standardized features into a logistic regression,
whose numbers leave scikit-learn as a ``LinearModel`` (plain numbers, loaded without running
code), and the calibration table its card records."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from forewarn.models.features import CONTACT_FEATURES
from forewarn.models.risk import CalibrationBin, LinearModel


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
