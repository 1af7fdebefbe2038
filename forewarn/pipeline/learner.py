"""The contact-risk learner: feature rows and milestones in, versioned models out.

Pure (no Kafka): ``forewarn learn`` feeds it the feature-rows and milestones topics, an
offline evaluation feeds it what a replay's batches produced, a test feeds it by hand. The
same inputs always give the same models, whatever order the two streams interleave in:

- **Labels at release.** A row waits until the watermark (stream time that every input has
  reached) passes its horizon; it is then positive if its customer contacted support within
  the horizon after it, strictly after it, looked up among the milestones received. A contact
  read before or after its rows labels them the same.
- **A refit grid in stream time.** Fits fall every ``refit_every`` of stream time (midnight
  UTC by default), each on the rows whose horizon closed by then, never on later ones.
- **Champion and challenger** (``models.learning.judge``): the challenger is fitted on the
  older labelled rows and judged against the champion on the most recent ones, which neither
  was fitted on. A window too thin to judge replaces nothing.
- **Serving from a stated time.** An accepted model serves events from
  ``fit time + activation_delay`` on, a time the scoring workers have not reached yet when it
  is published; a replay with the same releases applies each from the same time.

Every fit, accepted or refused, is a ``ModelRelease`` with its card and verdict: the model
history.

>>> learner = ContactLearner(LearnerSettings(horizon=1800, refit_every=86400))
>>> learner.advance(0.0)
[]
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from forewarn.models.contracts import FeatureRow, Milestone
from forewarn.models.features import CONTACT_FEATURE_SET, CONTACT_FEATURES
from forewarn.models.fitting import calibration_bins, fit_linear
from forewarn.models.friction import FrictionConfig
from forewarn.models.learning import LabelledRow, MaturingSample, judge, split_by_time
from forewarn.models.releases import ModelRelease, Verdict, nowhere
from forewarn.models.risk import (
    ClassBalance,
    HeldOutMetrics,
    LabelDefinition,
    LinearModel,
    ModelCard,
    RiskModel,
    TrainingData,
    model_file_bytes,
    predict,
)
from forewarn.models.state import stable_fraction

CONTACT = "support_contact"
LEARNED_KIND = "StandardScaler + LogisticRegression (scikit-learn), learned in the stream"


@dataclass(frozen=True, slots=True)
class LearnerSettings:
    #: a row is positive when a support contact follows it within this long
    horizon: float = 30 * 60.0
    #: how often, in stream time, a challenger is fitted (on a grid from the epoch)
    refit_every: float = 86_400.0
    #: share of negative rows kept (each weighing 1 / share more); positives all kept
    negative_rate: float = 1.0
    #: labelled rows kept at most (oldest out first)
    capacity: int = 200_000
    #: the most recent share of the labelled rows a challenger is judged on
    judge_share: float = 0.2
    #: the challenger's log loss must be this share below the champion's
    margin: float = 0.01
    min_positives: int = 30
    min_rows: int = 300
    #: an accepted model serves events this long (stream time) after its fit
    activation_delay: float = 3600.0
    #: the friction config the rows were scored with (friction is a feature; a worker
    #: scoring another one refuses the release)
    friction_version: str = field(default_factory=lambda: FrictionConfig.default().version)
    #: the share of the feature rows the learner keeps (a hash of customer and event; each
    #: kept row weighs 1 / share more): for streams whose rows outgrow ``max_waiting``
    row_share: float = 1.0
    #: rows waiting for their horizon at most (rows per second times the horizon)
    max_waiting: int = 1_000_000


@dataclass(slots=True)
class ContactLearner:
    """Rows and milestones in (any interleaving), releases out as the watermark moves."""

    settings: LearnerSettings = field(default_factory=LearnerSettings)
    champion: RiskModel | None = None
    #: fits at or before this stream time already happened (a restarted learner skips them)
    fitted_until: float = -math.inf
    sample: MaturingSample = field(init=False)
    watermark: float = -math.inf
    #: rows ignored: of another feature set or shape, not finite, behind the watermark when
    #: they came, or beyond ``max_waiting``
    ignored: int = 0
    #: releases in the history that cannot serve (``restore``)
    unusable: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self.sample = MaturingSample(s.horizon, s.negative_rate, s.capacity, s.max_waiting)

    def row(self, r: FeatureRow) -> None:
        """One feature row; a row that cannot be learned from is ignored and counted, never
        raised: a bad record on the topic must not stop the learner at every restart."""
        s = self.settings
        usable = (
            r.feature_set == CONTACT_FEATURE_SET
            and len(r.features) == len(CONTACT_FEATURES)
            and math.isfinite(r.weight)
            and all(math.isfinite(x) for x in r.features)
        )
        weight = r.weight
        if usable and s.row_share < 1:
            if stable_fraction(f"learn\x1f{r.customer_id}\x1f{r.event_id}") >= s.row_share:
                return  # not in the learner's own sample: neither learned nor ignored
            weight /= s.row_share
        at = r.occurred_at.timestamp()
        if not usable or not self.sample.add(r.customer_id, at, r.features, weight, r.event_id):
            self.ignored += 1

    def milestone(self, m: Milestone) -> None:
        if m.type == CONTACT:
            self.sample.contact(m.customer_id, m.occurred_at.timestamp())

    @property
    def labelled(self) -> deque[LabelledRow]:
        return self.sample.labelled

    @property
    def waiting(self) -> int:
        """Rows waiting for their horizon to pass."""
        return self.sample.pending

    def restore(self, releases: Sequence[ModelRelease]) -> None:
        """Start from the model history (a restart): the last accepted model is the champion,
        and fits up to the last one are not run again."""
        for r in sorted(releases, key=lambda r: r.fitted_at):
            self.fitted_until = max(self.fitted_until, r.fitted_at.timestamp())
            if not r.verdict.accepted:
                continue
            try:
                self.champion = r.risk_model()
            except ValueError:  # another feature set (an older version): not a champion now
                self.unusable += 1

    def advance(self, watermark: float) -> list[ModelRelease]:
        """Every input has reached ``watermark``: label what matured, fit on the grid points
        passed, and return the releases (accepted or refused), oldest first."""
        out: list[ModelRelease] = []
        if watermark <= self.watermark:
            return out
        every = self.settings.refit_every
        grid = math.floor(self.watermark / every) * every if self.watermark > -math.inf else None
        self.watermark = watermark
        points = []
        if grid is not None:
            t = grid + every
            while t <= watermark:
                points.append(t)
                t += every
        for t in points:
            self.sample.advance(t)
            if t > self.fitted_until:
                out.append(self._fit(t))
                self.fitted_until = t
        self.sample.advance(watermark)
        return out

    def _fit(self, t: float) -> ModelRelease:
        s = self.settings
        rows = [r for r in self.labelled if r.at + s.horizon <= t]
        fit_rows, judge_rows = split_by_time(rows, s.judge_share)
        version = f"contact-{datetime.fromtimestamp(t, UTC):%Y%m%dT%H%M}"
        x, y, w = self.sample.arrays(fit_rows)
        xj, yj, wj = self.sample.arrays(judge_rows)
        rate = float(np.average(y, weights=w)) if len(y) else 0.0
        linear = fit_linear(x, y, w) if len(set(y.tolist())) == 2 else _constant(rate)
        card = self._card(version, t, linear, fit_rows, xj, yj, wj)
        challenger = RiskModel(card, linear, nowhere(version))
        verdict = judge(
            None if self.champion is None else self.champion.score(xj),
            challenger.score(xj), yj, wj,
            margin=s.margin, min_positives=s.min_positives, min_rows=s.min_rows,
            base_rate=rate,
        )  # fmt: skip
        release = ModelRelease(
            model_version=version,
            fitted_at=datetime.fromtimestamp(t, UTC),
            serves_from=datetime.fromtimestamp(t + s.activation_delay, UTC),
            champion_version=None if self.champion is None else self.champion.version,
            verdict=Verdict(
                accepted=verdict.accept,
                reason=verdict.reason,
                champion_log_loss=_r(verdict.champion_loss),
                challenger_log_loss=_r(verdict.challenger_loss),
                positives=verdict.positives,
                rows=verdict.rows,
            ),
            card=card,
            model=linear,
        )
        if verdict.accept:
            self.champion = challenger
        return release

    def _card(
        self,
        version: str,
        t: float,
        linear: LinearModel,
        rows: list[LabelledRow],
        xj: NDArray[np.float64],
        yj: NDArray[np.int64],
        wj: NDArray[np.float64],
    ) -> ModelCard:
        s = self.settings
        p = predict(linear, xj)
        both = len(set(yj.tolist())) == 2
        positives = sum(r.label for r in rows)
        digest = hashlib.sha256()
        for r in rows:
            digest.update(f"{r.customer_id}\x1f{r.at!r}\x1f{r.label}\n".encode())
        start = min((r.at for r in rows), default=t)
        return ModelCard(
            model_version=version,
            created_at=datetime.fromtimestamp(t, UTC),
            model_kind=LEARNED_KIND,
            target="contact",
            model_sha256=hashlib.sha256(model_file_bytes(linear)).hexdigest(),
            features=list(CONTACT_FEATURES),
            friction_version=s.friction_version,
            training_data=TrainingData(
                sha256=digest.hexdigest(),
                events=len(rows),
                customers=len({r.customer_id for r in rows}),
                start=datetime.fromtimestamp(start, UTC),
                end=datetime.fromtimestamp(t, UTC),
            ),
            label=LabelDefinition(
                definition=f"a support contact within {s.horizon / 60:g} minutes after a "
                "sampled moment (labels matured in the stream)",
                horizon_days=s.horizon / 86_400,
                snapshot_every_hours=0.0,
            ),
            class_balance=ClassBalance(
                positives=positives,
                negatives=len(rows) - positives,
                rate=round(positives / max(1, len(rows)), 5),
            ),
            held_out=HeldOutMetrics(
                roc_auc=round(float(roc_auc_score(yj, p, sample_weight=wj)), 4) if both else 0.5,
                pr_auc=round(float(average_precision_score(yj, p, sample_weight=wj)), 4)
                if both
                else 0.0,
                brier=round(float(brier_score_loss(yj, p, sample_weight=wj)), 5) if len(p) else 0,
                calibration=calibration_bins(yj, p) if len(p) else [],
                operating_threshold=0.5,
                precision=0.0,
                recall=0.0,
                rows=len(yj),
            ),
        )


def _constant(rate: float) -> LinearModel:
    """A model that says the base rate whatever the features (one class only)."""
    q = min(max(rate, 1e-6), 1 - 1e-6)
    n = len(CONTACT_FEATURES)
    return LinearModel(features=list(CONTACT_FEATURES), mean=[0.0] * n, scale=[1.0] * n,
                       coef=[0.0] * n, intercept=math.log(q / (1 - q)))  # fmt: skip


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)
