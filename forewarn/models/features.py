"""The churn model's features: numbers read off a customer's state at one moment.

The stream (``ScoringEngine``), replays and training all fill these rows with the same
function from the same ``CustomerState``, updated by the same ``apply_event``: training and
serving cannot drift. The names and their order are part of a model's card; a worker refuses
a model trained on other features.

>>> from forewarn.models.state import CustomerState
>>> import numpy as np
>>> row = np.zeros(len(CHURN_FEATURES))
>>> churn_features(CustomerState("c1"), 0.0, 12.5, row)
>>> float(row[CHURN_FEATURES.index("friction")])
12.5
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from forewarn.models.state import POOR_SURVEY, CustomerState

DAY = 86400.0

#: (feature name, event types counted, window in days)
_COUNTS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("payment_failures_7d", ("payment_failed",), 7),
    ("checkout_errors_7d", ("checkout_error",), 7),
    ("delivery_problems_7d", ("delivery_delayed", "order_cancelled", "refund_requested"), 7),
    ("errors_7d", ("error_page", "app_crash", "login_failed"), 7),
    ("slow_or_empty_7d", ("slow_page", "search_no_results"), 7),
    ("support_contacts_7d", ("support_contact",), 7),
    ("help_visits_7d", ("help_center_view", "contact_form_opened"), 7),
    ("poor_surveys_7d", (POOR_SURVEY,), 7),
    ("cancel_intent_7d", ("subscription_cancel_started", "plan_downgraded"), 7),
    ("sessions_7d", ("session_start",), 7),
    ("purchases_7d", ("purchase",), 7),
)

CHURN_FEATURES: tuple[str, ...] = (
    "friction",
    *(name for name, _, _ in _COUNTS),
    "days_since_support_contact",
)
# Deliberately absent: how long Forewarn has seen the customer, or how many events. Both grow
# with the time a worker has been running, not with the customer, so a freshly started
# worker would see everyone as new (measured: the demo's compressed day made them dominate
# every explanation).

#: a customer who never contacted support counts as this many days ago
_NEVER_DAYS = 30.0


def churn_features(
    state: CustomerState, at: float, friction: float, out: NDArray[np.float64]
) -> None:
    """Write the features of ``state`` at event time ``at`` into ``out`` (one row)."""
    out[0] = friction
    i = 1
    for _, types, days in _COUNTS:
        out[i] = state.window_count(types, days * DAY, at)
        i += 1
    last = state.last_support_contact
    out[i] = _NEVER_DAYS if last is None or last > at else min(_NEVER_DAYS, (at - last) / DAY)


# -- the contact-risk model's features: what a support contact soon after an event follows --

HOUR = 3600.0
ERRORS = ("error_page", "app_crash", "login_failed", "checkout_error", "payment_failed")
HELP = ("help_center_view", "contact_form_opened")

#: (feature name, event types counted, window in hours)
_CONTACT_COUNTS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("errors_1h", ERRORS, 1),
    ("errors_24h", ERRORS, 24),
    ("payment_failures_24h", ("payment_failed",), 24),
    ("checkouts_1h", ("checkout_started",), 1),
    ("help_visits_1h", HELP, 1),
    ("help_visits_24h", HELP, 24),
    ("slow_or_empty_1h", ("slow_page", "search_no_results"), 1),
    ("sessions_24h", ("session_start",), 24),
    ("delivery_problems_7d", ("delivery_delayed", "order_cancelled", "refund_requested"), 168),
    ("support_contacts_7d", ("support_contact",), 168),
)

CONTACT_FEATURES: tuple[str, ...] = (
    "friction",
    *(name for name, _, _ in _CONTACT_COUNTS),
    "minutes_since_error",
    "checkout_without_purchase_1h",
    "session_minutes",
    "in_checkout",
    "days_since_support_contact",
)

#: names the contact features and their order, for rows that travel (``FeatureRow``)
CONTACT_FEATURE_SET = (
    "contact-" + hashlib.sha256(",".join(CONTACT_FEATURES).encode()).hexdigest()[:12]
)

#: the longest recency and session age a feature reads (a day, four hours)
_NEVER_MINUTES = 24 * 60.0
_SESSION_CAP_MINUTES = 240.0


def contact_features(
    state: CustomerState, at: float, friction: float, out: NDArray[np.float64]
) -> None:
    """The contact-risk features of ``state`` at event time ``at`` into ``out`` (one row).

    >>> row = np.zeros(len(CONTACT_FEATURES))
    >>> contact_features(CustomerState("c1"), 0.0, 3.0, row)
    >>> float(row[CONTACT_FEATURES.index("minutes_since_error")])
    1440.0
    """
    out[0] = friction
    i = 1
    for _, types, hours in _CONTACT_COUNTS:
        out[i] = state.window_count(types, hours * HOUR, at)
        i += 1
    last_error = max(
        (t for kind in ERRORS for t in state.occurrences.get(kind, ()) if t <= at), default=None
    )
    out[i] = _NEVER_MINUTES if last_error is None else min(_NEVER_MINUTES, (at - last_error) / 60)
    checkouts = state.window_count(("checkout_started",), HOUR, at)
    out[i + 1] = max(0, checkouts - state.window_count(("purchase",), HOUR, at))
    session = state.session
    age = (at - session.started_at) / 60 if session.key else 0.0
    out[i + 2] = min(_SESSION_CAP_MINUTES, max(0.0, age))
    out[i + 3] = 1.0 if session.in_checkout else 0.0
    last = state.last_support_contact
    out[i + 4] = _NEVER_DAYS if last is None or last > at else min(_NEVER_DAYS, (at - last) / DAY)
