"""The businesses the simulator can play (``World``): who the customers are, what troubles
them, how trouble turns into support contacts, incidents and traffic growth.

``OURS`` is the world the shipped defaults were tuned on; ``ELSEWHERE`` is one they were not,
shaped after what a real clickstream from another source showed (``simulator.py``'s
docstring, docs/decisions.md §25). Judge defaults on the world they were not tuned on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

HOUR = 3600.0

#: how much each event type frustrates a customer (ground truth, hidden from Forewarn)
FRUSTRATION = {
    "payment_failed": 0.35, "checkout_error": 0.3, "search_no_results": 0.05,
    "error_page": 0.15, "app_crash": 0.25, "slow_page": 0.05, "login_failed": 0.15,
    "delivery_delayed": 0.5, "order_cancelled": 0.4, "rage_click": 0.05,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    share: float
    sessions_per_day: float
    pages_per_session: float
    buy_probability: float
    subscriber: bool
    app_share: float


PERSONAS = (
    Persona("browser", 0.40, 0.8, 4.0, 0.08, False, 0.3),
    Persona("shopper", 0.35, 1.2, 6.0, 0.30, False, 0.5),
    Persona("subscriber", 0.20, 1.5, 5.0, 0.15, True, 0.6),
    Persona("power_user", 0.05, 4.0, 8.0, 0.35, True, 0.8),
)


@dataclass(frozen=True, slots=True)
class World:
    """What kind of business the simulator plays: its rates and how customers react."""

    name: str
    personas: tuple[Persona, ...]
    frustration: dict[str, float]
    #: chance that a frustrating event leads to a support contact: min(cap, per_unit * f)
    contact_per_frustration: float
    contact_cap: float
    #: mean delay from the event to the contact
    contact_delay_seconds: float
    #: chance per session of a contact that no trouble explains (a question), and its delay
    unrelated_contact_per_session: float
    unrelated_contact_delay_seconds: float
    #: what the session itself says (the outside clickstream's strongest predictors after a
    #: recent error): the chance of a contact after a checkout left without a purchase, and
    #: per step of the session (long sessions); the contact comes this soon after
    abandoned_checkout_contact: float
    contact_per_session_step: float
    session_contact_delay_seconds: float
    #: chance that a checkout is left with no error at all (shipping costs, second thoughts)
    checkout_abandon: float
    #: per step: login failure, site error, slow page, app crash, no search results,
    #: checkout error, payment failure, late delivery
    login_failed: float
    site_errors: float
    slow_page: float
    app_crash: float
    search_no_results: float
    checkout_error: float
    payment_failed: float
    delivery_delayed: float
    #: share of customers present from the start; the rest join evenly over the history
    #: (1.0: everyone from the start; 1/3: traffic triples)
    present_from_start: float
    incidents: Callable[[datetime, timedelta], tuple[Incident, ...]]


@dataclass(frozen=True, slots=True)
class Incident:
    """A period in which something upstream is broken for some customers."""

    kind: str  # payment_gateway_outage | carrier_delays | site_errors
    start: datetime
    end: datetime
    #: probability that an affected step fails during the incident
    severity: float

    def active(self, at: float) -> bool:
        return self.start.timestamp() <= at < self.end.timestamp()


def default_incidents(start: datetime, span: timedelta) -> tuple[Incident, ...]:
    """A payment outage 40-55% into the run and a carrier delay wave 60-80% into it."""
    return (
        Incident("payment_gateway_outage", start + span * 0.40, start + span * 0.55, 0.45),
        Incident("carrier_delays", start + span * 0.60, start + span * 0.80, 0.35),
    )


def late_site_incident(start: datetime, span: timedelta) -> tuple[Incident, ...]:
    """Site errors from 55% into the run to its end (none like it before)."""
    return (Incident("site_errors", start + span * 0.55, start + span, 0.03),)


OURS = World(
    name="ours",
    personas=PERSONAS,
    frustration=FRUSTRATION,
    contact_per_frustration=0.3,
    contact_cap=0.6,
    contact_delay_seconds=1.5 * HOUR,
    unrelated_contact_per_session=0.004,
    unrelated_contact_delay_seconds=HOUR,
    abandoned_checkout_contact=0.0,
    contact_per_session_step=0.0,
    session_contact_delay_seconds=0.0,
    checkout_abandon=0.0,
    login_failed=0.03,
    site_errors=0.015,
    slow_page=0.03,
    app_crash=0.006,
    search_no_results=0.12,
    checkout_error=0.04,
    payment_failed=0.03,
    delivery_delayed=0.05,
    present_from_start=1.0,
    incidents=default_incidents,
)

ELSEWHERE = World(
    name="elsewhere",
    personas=(
        Persona("browser", 0.55, 1.0, 7.0, 0.05, False, 0.2),
        Persona("shopper", 0.35, 1.5, 9.0, 0.22, False, 0.3),
        Persona("subscriber", 0.10, 1.2, 6.0, 0.12, True, 0.5),
    ),
    # one error is enough to send someone to support; little piles up
    frustration={
        "payment_failed": 0.6,
        "checkout_error": 0.6,
        "search_no_results": 0.02,
        "error_page": 0.45,
        "app_crash": 0.5,
        "slow_page": 0.02,
        "login_failed": 0.3,
        "delivery_delayed": 0.3,
        "order_cancelled": 0.3,
        "rage_click": 0.02,
    },
    # on the outside clickstream acting on every error anticipated only a quarter of contacts
    contact_per_frustration=0.08,
    contact_cap=0.12,
    contact_delay_seconds=180.0,
    unrelated_contact_per_session=0.03,
    unrelated_contact_delay_seconds=600.0,
    abandoned_checkout_contact=0.15,
    contact_per_session_step=0.002,
    session_contact_delay_seconds=120.0,
    checkout_abandon=0.35,
    login_failed=0.01,
    site_errors=0.004,
    slow_page=0.01,
    app_crash=0.002,
    search_no_results=0.05,
    checkout_error=0.015,
    payment_failed=0.015,
    delivery_delayed=0.03,
    present_from_start=1 / 3,
    incidents=late_site_incident,
)

WORLDS = {w.name: w for w in (OURS, ELSEWHERE)}
