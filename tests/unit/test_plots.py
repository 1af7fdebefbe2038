"""The evaluate plot as people read it (issue 16, point 10)."""

from __future__ import annotations

from forewarn.offline.measures import Sweep
from forewarn.offline.plots import below_curve

CURVE = Sweep(thresholds=[80, 60, 40, 20], actions_per_customer=[0.05, 0.2, 0.6, 1.2],
              coverage=[0.15, 0.5, 0.6, 0.85])  # fmt: skip


def test_a_point_below_the_friction_threshold_curve_at_equal_volume_is_said() -> None:
    assert below_curve(CURVE, 0.2, 0.3)  # friction at equal volume anticipates 50%
    assert not below_curve(CURVE, 0.6, 0.68)  # above the curve
    assert not below_curve(CURVE, 3.0, 0.1), "outside the curve: nothing to compare"
