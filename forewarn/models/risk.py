"""Risk models (churn risk, contact risk): a standardized logistic regression in a directory,
with its card.

An artifact directory holds ``model.json`` (the fitted numbers: each feature's training mean
and scale, the coefficients and the intercept) and ``card.json`` (``ModelCard``: version,
features in order, training data, label, class balance, held-out metrics, and the SHA-256 of
``model.json``). ``load_risk_model`` refuses an artifact whose model file is not the one
its card names (swapped or truncated), whose features are not the ones this version computes
(``features.CHURN_FEATURES`` or ``features.CONTACT_FEATURES``, by the card's ``target``),
or whose numbers are not finite, and names the file and field.
Scoring is always a whole matrix (one row per event of a batch).

Loading never runs code from the artifact: ``model.json`` is plain numbers, read with a JSON
parser. (Pickles, which scikit-learn's own persistence uses, execute whatever they hold when
loaded; a model file is data a deployment pipeline moves around, so it must not be code.)

Explanations: each feature's contribution to the log-odds is ``coef * (x - mean) / scale``;
the contributions and the intercept add up to the log-odds of the score exactly, so the
reasons on an action account for the whole risk.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from forewarn.errors import ForewarnError
from forewarn.models.config_file import first_error
from forewarn.models.features import CHURN_FEATURES, CONTACT_FEATURES

MODEL_FILE = "model.json"
CARD_FILE = "card.json"
#: what earlier versions wrote (a pickle): named in the refusal, never loaded
PICKLED_MODEL_FILE = "model.joblib"

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
    "errors_1h": "errors in the last hour",
    "errors_24h": "errors today",
    "payment_failures_24h": "failed payments today",
    "checkouts_1h": "checkouts started in the last hour",
    "help_visits_1h": "help-page visits in the last hour",
    "help_visits_24h": "help-page visits today",
    "slow_or_empty_1h": "slow pages and empty searches in the last hour",
    "sessions_24h": "visits today",
    "minutes_since_error": "minutes since the last error",
    "checkout_without_purchase_1h": "checkouts left without a purchase",
    "session_minutes": "the session's length",
    "in_checkout": "being in checkout",
}

#: what a model predicts -> the features this version computes for it
Target = Literal["churn", "contact"]
FEATURES_OF: dict[str, tuple[str, ...]] = {"churn": CHURN_FEATURES, "contact": CONTACT_FEATURES}


class ArtifactError(ForewarnError, ValueError):
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


def _finite(values: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("every number must be finite")
    return values


Numbers = Annotated[list[float], AfterValidator(_finite)]


class LinearModel(BaseModel):
    """``model.json``: a logistic regression on standardized features, as plain numbers.

    risk = 1 / (1 + exp(-(intercept + sum(coef * (x - mean) / scale))))
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["forewarn-linear-logistic"] = "forewarn-linear-logistic"
    format_version: Literal[1] = 1
    features: list[str] = Field(min_length=1)
    mean: Numbers
    scale: Numbers
    coef: Numbers
    intercept: float = Field(allow_inf_nan=False)

    def check_shapes(self) -> str | None:
        n = len(self.features)
        for name in ("mean", "scale", "coef"):
            if len(getattr(self, name)) != n:
                return f"{name}: {len(getattr(self, name))} numbers for {n} features"
        if any(v <= 0 for v in self.scale):
            return "scale: every scale must be positive"
        return None


class ModelCard(BaseModel):
    """What a model is, what it was trained on, and how well it did on held-out data."""

    model_config = ConfigDict(frozen=True)

    model_version: str
    created_at: datetime
    model_kind: str
    #: what it predicts: churn, or a support contact within the label's horizon
    target: Target = "churn"
    #: SHA-256 (hex) of ``model.json``: a swapped or truncated model file is refused
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    features: list[str] = Field(min_length=1)
    friction_version: str
    training_data: TrainingData
    label: LabelDefinition
    class_balance: ClassBalance
    held_out: HeldOutMetrics


@dataclass(frozen=True, slots=True)
class RiskModel:
    card: ModelCard
    linear: LinearModel
    path: Path
    # The numbers as arrays, made once (not per batch).
    _mean: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    _scale: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    _coef: NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lm = self.linear
        object.__setattr__(self, "_mean", np.asarray(lm.mean, dtype=np.float64))
        object.__setattr__(self, "_scale", np.asarray(lm.scale, dtype=np.float64))
        object.__setattr__(self, "_coef", np.asarray(lm.coef, dtype=np.float64))

    @property
    def version(self) -> str:
        return self.card.model_version

    @property
    def features(self) -> list[str]:
        return self.linear.features

    @property
    def threshold(self) -> float:
        """The operating threshold chosen at training (maximum F1)."""
        return self.card.held_out.operating_threshold

    def score(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """The risk 0-1 for every row of a feature matrix (one call per batch)."""
        if not len(rows):
            return np.zeros(0)
        return _logistic(self.standardized(rows) @ self._coef + self.linear.intercept)

    def contributions(self, rows: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
        """Each feature's signed contribution to the log-odds, and the intercept."""
        return self.standardized(rows) * self._coef, self.linear.intercept

    def explain(self, row: NDArray[np.float64], top: int = 3) -> list[tuple[str, float]]:
        """What raises one row's risk most, in words with log-odds (``explain_risk``)."""
        z = self.standardized(row)
        return explain_risk(z * self._coef, z > 0, top, self.linear.features)

    def standardized(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """Features in training standard deviations from the training mean."""
        z: NDArray[np.float64] = (rows - self._mean) / self._scale
        return z


def explain_risk(
    contributions: NDArray[np.float64] | list[float],
    above_usual: NDArray[np.bool_] | list[bool],
    top: int = 3,
    features: Sequence[str] = CHURN_FEATURES,
) -> list[tuple[str, float]]:
    """The features that raise the risk most, as (words, log-odds), largest first.

    ``above_usual``: whether each feature is above its training mean, so that the words say
    which way it pushes ("failed payments this week above usual").
    """
    ranked = sorted(range(len(contributions)), key=lambda i: -float(contributions[i]))
    return [
        (
            f"{FEATURE_WORDS.get(features[i], features[i])} "
            f"{'above' if above_usual[i] else 'below'} usual",
            float(contributions[i]),
        )
        for i in ranked[:top]
        if float(contributions[i]) > 0.05
    ]


def feature_difference(
    found: list[str], want_features: Sequence[str] = CHURN_FEATURES
) -> str | None:
    """How ``found`` differs from the features this version computes (None: identical)."""
    want = list(want_features)
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


def load_risk_model(
    path: Path, friction_version: str | None = None, target: Target = "churn"
) -> RiskModel:
    """Load an artifact directory; ``ArtifactError`` (naming the file) when it cannot be used.

    Nothing in the directory is executed. ``friction_version``: the friction config the
    caller scores with; a model trained on another one is refused (friction is one of its
    features). ``target``: what the caller serves it as; a churn model is refused where a
    contact-risk model is expected, and the other way round.
    """
    card_path, model_path = path / CARD_FILE, path / MODEL_FILE
    try:
        card = ModelCard.model_validate_json(_read(card_path, "no model card"))
    except ValidationError as e:
        raise ArtifactError(f"{card_path}: {first_error(e)}") from e
    if card.target != target:
        raise ArtifactError(
            f"{card_path}: target: a {card.target}-risk model, where a {target}-risk model "
            "is expected"
        )
    diff = feature_difference(card.features, FEATURES_OF[target])
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
    if not model_path.exists() and (path / PICKLED_MODEL_FILE).exists():
        raise ArtifactError(
            f"{path / PICKLED_MODEL_FILE}: a pickled model, which Forewarn no longer loads "
            f"(loading a pickle runs whatever code it holds); retrain with `forewarn train`, "
            f"which writes {MODEL_FILE}"
        )
    data = _read(model_path, "no fitted model")
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.model_sha256:
        raise ArtifactError(
            f"{model_path}: model_sha256: the file's SHA-256 is {digest}, the card names "
            f"{card.model_sha256}: the model file was replaced or cut short"
        )
    try:
        linear = LinearModel.model_validate_json(data)
    except ValidationError as e:
        raise ArtifactError(f"{model_path}: {first_error(e)}") from e
    problem = linear.check_shapes()
    if problem is None and linear.features != card.features:
        problem = "features: the model file and the card list different features"
    if problem is not None:
        raise ArtifactError(f"{model_path}: {problem}")
    return RiskModel(card, linear, path)


def _read(path: Path, missing: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: {missing}") from e
    except OSError as e:
        raise ArtifactError(f"{path}: unreadable: {e}") from e


def linear_model_of(pipeline: object, features: Sequence[str] = CHURN_FEATURES) -> LinearModel:
    """The numbers of a fitted scikit-learn ``StandardScaler + LogisticRegression``."""
    scaler, clf = pipeline[0], pipeline[-1]  # type: ignore[index]
    return LinearModel(
        features=list(features),
        mean=[float(v) for v in scaler.mean_],
        scale=[float(v) for v in scaler.scale_],
        coef=[float(v) for v in clf.coef_[0]],
        intercept=float(clf.intercept_[0]),
    )


def predict(linear: LinearModel, rows: NDArray[np.float64]) -> NDArray[np.float64]:
    """A model's risk for every row, from its numbers alone (no card needed)."""
    if not len(rows):
        return np.zeros(0)
    z = (rows - np.asarray(linear.mean)) / np.asarray(linear.scale)
    return _logistic(z @ np.asarray(linear.coef) + linear.intercept)


def _logistic(logit: NDArray[np.float64]) -> NDArray[np.float64]:
    risk: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-logit))
    return risk


def model_file_bytes(linear: LinearModel) -> bytes:
    """``model.json`` as written (the card's ``model_sha256`` is taken over these bytes)."""
    return (json.dumps(linear.model_dump(mode="json"), indent=1) + "\n").encode()


def save_risk_model(path: Path, linear: LinearModel, card: ModelCard) -> None:
    """Write ``model.json``, then the card that names its SHA-256 (the card last: a worker
    that reads the directory halfway sees an old card that refuses the new model file)."""
    path.mkdir(parents=True, exist_ok=True)
    data = model_file_bytes(linear)
    if card.model_sha256 != hashlib.sha256(data).hexdigest():
        raise ValueError("the card's model_sha256 does not match the model file")
    (path / MODEL_FILE).write_bytes(data)
    text = json.dumps(card.model_dump(mode="json"), indent=2)
    (path / CARD_FILE).write_text(text + "\n")


def default_model_path() -> Path:
    """The model shipped with Forewarn (trained on simulator data by ``make model``)."""
    return Path(__file__).parent / "default_model"
