"""The churn-risk model: a scikit-learn pipeline in a directory, with its card.

An artifact directory holds ``model.joblib`` (the fitted pipeline: a scaler and a logistic
regression) and ``card.json`` (``ModelCard``: version, features in order, training data,
label, class balance, held-out metrics). ``load_churn_model`` refuses an artifact whose
features are not the ones this version computes (``features.CHURN_FEATURES``) and names the
difference. Scoring is always a whole matrix (one row per event of a batch).

Explanations: for the linear model each feature's contribution to the log-odds is
``coef * (x - mean) / scale``; the contributions and the intercept add up to the log-odds of
the score exactly, so the reasons on an action account for the whole risk.

Loading runs the artifact's pickled code (joblib): only load artifacts you trust, as you
would a Python package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forewarn.models.config_file import first_error
from forewarn.models.features import CHURN_FEATURES

MODEL_FILE = "model.joblib"
CARD_FILE = "card.json"

#: how feature names read in an action's reasons
FEATURE_WORDS = {
    "friction": "current friction",
    "payment_failures_7d": "failed payments this week",
    "checkout_errors_7d": "checkout errors this week",
    "delivery_problems_7d": "delivery problems this week",
    "errors_7d": "errors and crashes this week",
    "slow_or_empty_7d": "slow pages and empty searches this week",
    "support_contacts_7d": "support contacts this week",
    "help_visits_7d": "help-page visits this week",
    "poor_surveys_7d": "poor survey scores this week",
    "cancel_intent_7d": "cancellation or downgrade attempts this week",
    "sessions_7d": "visits this week",
    "purchases_7d": "purchases this week",
    "days_since_support_contact": "days since the last support contact",
}


class ArtifactError(ValueError):
    """A model artifact that cannot be used, and why (naming the file)."""


class CalibrationBin(BaseModel):
    model_config = ConfigDict(frozen=True)

    lower: float
    upper: float
    predicted: float
    observed: float
    n: int


class HeldOutMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    roc_auc: float
    pr_auc: float
    brier: float
    calibration: list[CalibrationBin]
    operating_threshold: float
    precision: float
    recall: float
    rows: int


class TrainingData(BaseModel):
    model_config = ConfigDict(frozen=True)

    sha256: str
    events: int
    customers: int
    start: datetime
    end: datetime


class LabelDefinition(BaseModel):
    model_config = ConfigDict(frozen=True)

    definition: str
    horizon_days: float
    snapshot_every_hours: float


class ClassBalance(BaseModel):
    model_config = ConfigDict(frozen=True)

    positives: int
    negatives: int
    rate: float


class ModelCard(BaseModel):
    """What a model is, what it was trained on, and how well it did on held-out data."""

    model_config = ConfigDict(frozen=True)

    model_version: str
    created_at: datetime
    model_kind: str
    features: list[str] = Field(min_length=1)
    friction_version: str
    training_data: TrainingData
    label: LabelDefinition
    class_balance: ClassBalance
    held_out: HeldOutMetrics


@dataclass(frozen=True, slots=True)
class ChurnModel:
    card: ModelCard
    pipeline: Any
    path: Path

    @property
    def version(self) -> str:
        return self.card.model_version

    @property
    def threshold(self) -> float:
        """The operating threshold chosen at training (maximum F1)."""
        return self.card.held_out.operating_threshold

    def score(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """Churn risk 0-1 for every row of a feature matrix (one call per batch)."""
        if not len(rows):
            return np.zeros(0)
        proba: NDArray[np.float64] = self.pipeline.predict_proba(rows)[:, 1]
        return proba

    def contributions(self, rows: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
        """Each feature's signed contribution to the log-odds, and the intercept."""
        clf = self.pipeline[-1]
        return self.standardized(rows) * clf.coef_[0], float(clf.intercept_[0])

    def explain(self, row: NDArray[np.float64], top: int = 3) -> list[tuple[str, float]]:
        """What raises one row's risk most, in words with log-odds (``explain_churn``)."""
        z = self.standardized(row)
        return explain_churn(z * self.pipeline[-1].coef_[0], z > 0, top)

    def standardized(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """Features in training standard deviations from the training mean."""
        scaler = self.pipeline[0]
        z: NDArray[np.float64] = (rows - scaler.mean_) / scaler.scale_
        return z


def explain_churn(
    contributions: NDArray[np.float64] | list[float],
    above_usual: NDArray[np.bool_] | list[bool],
    top: int = 3,
) -> list[tuple[str, float]]:
    """The features that raise the risk most, as (words, log-odds), largest first.

    ``above_usual``: whether each feature is above its training mean, so that the words say
    which way it pushes ("failed payments this week above usual").
    """
    ranked = sorted(range(len(contributions)), key=lambda i: -float(contributions[i]))
    return [
        (
            f"{FEATURE_WORDS.get(CHURN_FEATURES[i], CHURN_FEATURES[i])} "
            f"{'above' if above_usual[i] else 'below'} usual",
            float(contributions[i]),
        )
        for i in ranked[:top]
        if float(contributions[i]) > 0.05
    ]


def feature_difference(found: list[str]) -> str | None:
    """How ``found`` differs from the features this version computes (None: identical)."""
    want = list(CHURN_FEATURES)
    if found == want:
        return None
    missing = [f for f in want if f not in found]
    extra = [f for f in found if f not in want]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unknown {extra}")
    if not parts:
        parts.append(f"same features in another order: {found}")
    return "; ".join(parts)


def load_churn_model(path: Path, friction_version: str | None = None) -> ChurnModel:
    """Load an artifact directory; ``ArtifactError`` (naming the file) when it cannot be used.

    ``friction_version``: the friction config the caller scores with; a model trained on
    another one is refused (friction is one of its features).
    """
    card_path = path / CARD_FILE
    try:
        card = ModelCard.model_validate_json(card_path.read_bytes())
    except FileNotFoundError as e:
        raise ArtifactError(f"{card_path}: no model card") from e
    except ValidationError as e:
        raise ArtifactError(f"{card_path}: {first_error(e)}") from e
    diff = feature_difference(card.features)
    if diff is not None:
        raise ArtifactError(
            f"{card_path}: features: the model was trained on other features than this "
            f"worker computes: {diff}"
        )
    if friction_version is not None and card.friction_version != friction_version:
        raise ArtifactError(
            f"{card_path}: friction_version: the model was trained with "
            f"{card.friction_version!r}, this worker scores friction {friction_version!r}"
        )
    model_path = path / MODEL_FILE
    try:
        pipeline = joblib.load(model_path)
    except FileNotFoundError as e:
        raise ArtifactError(f"{model_path}: no fitted model") from e
    except Exception as e:
        raise ArtifactError(f"{model_path}: unreadable: {type(e).__name__}: {e}") from e
    n = getattr(pipeline, "n_features_in_", None)
    if n != len(CHURN_FEATURES) or not hasattr(pipeline, "predict_proba"):
        raise ArtifactError(
            f"{model_path}: expects {n} features, the card and this worker have "
            f"{len(CHURN_FEATURES)}"
        )
    return ChurnModel(card, pipeline, path)


def save_churn_model(path: Path, pipeline: Any, card: ModelCard) -> None:
    path.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, path / MODEL_FILE)
    text = json.dumps(card.model_dump(mode="json"), indent=2)
    (path / CARD_FILE).write_text(text + "\n")


def default_model_path() -> Path:
    """The model shipped with Forewarn (trained on simulator data by ``make model``)."""
    return Path(__file__).parent / "default_model"
