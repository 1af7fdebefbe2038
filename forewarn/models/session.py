"""Session tracking: rage-click bursts and page loops within one visit.

A session is the event's ``session_id`` when upstream provides one, otherwise a run of events
with no gap longer than ``SESSION_GAP_SECONDS``. Each detection fires at most once per session
and is returned as a derived trigger (``rage_burst``, ``page_loop``) that rules can react to.

>>> s = SessionState()
>>> [track_session(s, "rage_click", 10.0 + i, "s1", None) for i in range(3)]
[(), (), ('rage_burst',)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

SESSION_GAP_SECONDS = 30 * 60
RAGE_BURST_CLICKS = 3
PAGE_LOOP_VISITS = 3
PAGE_HISTORY = 8

RAGE_BURST = "rage_burst"
PAGE_LOOP = "page_loop"
DERIVED_TRIGGERS = (RAGE_BURST, PAGE_LOOP)

_PAGE_EVENTS = frozenset({"page_view", "product_view", "error_page", "slow_page"})


@dataclass(slots=True)
class SessionState:
    key: str = ""
    started_at: float = 0.0
    last_at: float = 0.0
    pages: list[str] = field(default_factory=list)
    rage_clicks: int = 0
    rage_burst_seen: bool = False
    page_loop_seen: bool = False
    in_checkout: bool = False

    def copy(self) -> SessionState:
        return SessionState(  # positional, in field order, as CustomerState.copy
            self.key, self.started_at, self.last_at, self.pages[:], self.rage_clicks,
            self.rage_burst_seen, self.page_loop_seen, self.in_checkout,
        )  # fmt: skip

    def restart(self, key: str, at: float) -> None:
        self.key = key
        self.started_at = at
        self.pages.clear()
        self.rage_clicks = 0
        self.rage_burst_seen = False
        self.page_loop_seen = False
        self.in_checkout = False


def track_session(
    session: SessionState, event_type: str, at: float, session_id: str | None, page: str | None
) -> tuple[str, ...]:
    """Advance the session with one event; return the detections it completes."""
    if session_id is not None:
        if session_id != session.key:
            session.restart(session_id, at)
    elif not session.key.startswith("~") or at - session.last_at > SESSION_GAP_SECONDS:
        # Implicit sessions get a '~' key so they never collide with upstream ids.
        session.restart(f"~{int(at)}", at)
    session.last_at = max(session.last_at, at)

    derived: tuple[str, ...] = ()
    if event_type == "rage_click":
        session.rage_clicks += 1
        if session.rage_clicks >= RAGE_BURST_CLICKS and not session.rage_burst_seen:
            session.rage_burst_seen = True
            derived += (RAGE_BURST,)
    elif event_type == "checkout_started":
        session.in_checkout = True
    elif event_type in ("purchase", "payment_succeeded"):
        session.in_checkout = False

    if page is not None and event_type in _PAGE_EVENTS:
        session.pages.append(page)
        del session.pages[:-PAGE_HISTORY]
        if session.pages.count(page) >= PAGE_LOOP_VISITS and not session.page_loop_seen:
            session.page_loop_seen = True
            derived += (PAGE_LOOP,)
    return derived
