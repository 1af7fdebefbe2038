"""The ``forewarn evaluate --plot`` picture (matplotlib, the ``eval`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from forewarn.errors import ForewarnError
from forewarn.offline.measures import Sweep
from forewarn.pipeline.results import ScoredEvent


class PlottingUnavailable(ForewarnError, RuntimeError):
    """matplotlib is not installed (it is an optional extra: ``pip install 'forewarn[eval]'``)."""


def plot_report(
    path: Path,
    scored: Sequence[ScoredEvent],
    contact_label: Sequence[int],
    sweep: Sweep,
    points: dict[str, tuple[float, float]],
    below: str | None = None,
) -> None:
    """Score distributions for events followed by a contact or not, and the coverage curve
    with ``points`` (actions per 1,000 customers a day, coverage) on it, as in the report's
    table; ``below``: the report's words when the rulebook sits below the curve."""
    fig = figure(scored, contact_label, sweep, points, below)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def figure(
    scored: Sequence[ScoredEvent],
    contact_label: Sequence[int],
    sweep: Sweep,
    points: dict[str, tuple[float, float]],
    below: str | None = None,
) -> Any:
    """The plot's matplotlib figure (``plot_report`` saves it)."""
    try:
        import matplotlib
    except ImportError as e:  # an optional extra: production workers need no plots
        raise PlottingUnavailable(
            "plots need matplotlib: pip install 'forewarn[eval]' (make install has it)"
        ) from e
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    friction = np.array([s.friction for s in scored])
    y = np.array(contact_label, dtype=bool)
    has_churn = any(s.churn_risk is not None for s in scored)
    fig, axes = plt.subplots(1, 3 if has_churn else 2, figsize=(15 if has_churn else 10, 4.2))
    friction_bins = np.linspace(0, 100, 41)
    _split_histogram(axes[0], friction, y, friction_bins, "Friction", "friction score")
    if has_churn:
        churn = np.array([s.churn_risk or 0.0 for s in scored])
        _split_histogram(axes[1], churn, y, np.linspace(0, 1, 41), "Churn risk", "churn risk")
    ax = axes[-1]
    volume = sweep.actions_per_1000_customers_per_day
    ax.plot(volume, sweep.coverage, marker=".", label="friction threshold")
    for thr, x, c in zip(sweep.thresholds, volume, sweep.coverage, strict=True):
        if thr % 20 == 0:
            ax.annotate(f"{thr:g}", (x, c), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for k, (name, (x, c)) in enumerate(points.items()):
        ax.scatter([x], [c], s=40, zorder=3)
        # alternate the labels above and below: points often sit close together
        ax.annotate(name, (x, c), textcoords="offset points", xytext=(6, 8 - 18 * (k % 2)),
                    fontsize=9)  # fmt: skip
    ax.set(
        title="Contact coverage vs outreach volume",
        xlabel="actions per 1,000 customers a day",  # the table's "per 1k/day"
        ylabel="coverage: support contacts anticipated",
    )
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))  # the table's unit: percent
    if below is not None:  # the report says the same (evaluate.format_report)
        ax.text(0.02, 0.97, below.replace(" at equal", "\nat equal"), transform=ax.transAxes,
                va="top", fontsize=8)  # fmt: skip
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _split_histogram(
    ax: Any,
    values: NDArray[np.float64],
    contact: NDArray[np.bool_],
    bins: Any,
    what: str,
    unit: str,
) -> None:
    # outlines in two colours, not filled bars: overlapping fills blend into a third colour
    ax.hist(values[~contact], bins=bins, density=True, histtype="step", linewidth=1.8,
            color="tab:blue", label="no contact within 24 h")  # fmt: skip
    ax.hist(values[contact], bins=bins, density=True, histtype="step", linewidth=1.8,
            color="tab:orange", linestyle="--", label="contact within 24 h")  # fmt: skip
    ax.set(title=f"{what} at each event", xlabel=unit, ylabel="density")
    ax.set_yscale("log")
    ax.legend()
