"""What the rules see of one scored event: the event, the customer's state at that moment,
and the scores before and after it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from forewarn.models.event_fields import EventFields
from forewarn.models.state import CustomerState

Reasons = tuple[tuple[str, float], ...]


@dataclass(slots=True)
class Moment:
    """One scored event, as the rules see it; read-only by convention (built for every event:
    frozen, it cost ~0.8 µs more each)."""

    event: EventFields
    at: float
    state: CustomerState
    derived: tuple[str, ...]
    in_checkout: bool
    friction: float
    prev_friction: float
    #: points each friction signal adds to the score (one row of the batch matrix)
    contributions: Sequence[float] | NDArray[np.float64]
    #: churn risk 0-1 after this event, and before it (None: no churn model loaded)
    churn: float | None = None
    prev_churn: float | None = None
    #: the chance of a support contact soon, after this event and before it (None: no
    #: contact-risk model loaded), and what raises it most
    contact: float | None = None
    prev_contact: float | None = None
    #: the contact-risk model version that scored this moment
    contact_version: str | None = None
    #: the partition's stream time when the event was processed (None: the event's own)
    stream_time: float | None = None
    #: what raises the churn risk and the contact risk most, each as (words, log-odds),
    #: largest first: worked out when an action first asks (``churn_reasons``), since
    #: explaining costs ~7 µs and most moments are never acted on
    explain_risks: Callable[[], tuple[Reasons, Reasons]] | None = None
    _risk_reasons: tuple[Reasons, Reasons] | None = field(default=None, init=False, repr=False)

    @property
    def churn_reasons(self) -> Reasons:
        """What raises the churn risk most (empty: no churn model, or not material)."""
        return self._explained()[0]

    @property
    def contact_reasons(self) -> Reasons:
        """What raises the contact risk most (empty: no contact-risk model)."""
        return self._explained()[1]

    def _explained(self) -> tuple[Reasons, Reasons]:
        if self._risk_reasons is None:
            explain = self.explain_risks
            self._risk_reasons = ((), ()) if explain is None else explain()
        return self._risk_reasons

    @property
    def now(self) -> float:
        """Stream time at this moment: the partition's, or the event's own without one."""
        return self.at if self.stream_time is None else self.stream_time
