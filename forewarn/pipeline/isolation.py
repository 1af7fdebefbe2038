"""Running the engine so that a record that makes it raise is found and dead-lettered alone."""

from __future__ import annotations

from collections.abc import Sequence

from forewarn.models.contracts import DeadLetterReason
from forewarn.pipeline.codecs import RawRecord
from forewarn.pipeline.engine import ScoringEngine
from forewarn.pipeline.results import BatchResult


def process_isolating(
    engine: ScoringEngine, events: Sequence[RawRecord], profiles: Sequence[RawRecord] = ()
) -> tuple[BatchResult, int]:
    """``engine.process``, splitting the batch when a pass raises; and how many passes did.

    Bad data is dead-lettered inside the engine; a pass that raises meets a bug. A failed
    pass leaves no trace (the engine saves only when a pass succeeds, and hands out copies
    until then), so the batch is cut in halves, and halves of halves, until each record at
    fault stands alone and goes to the DLQ as ``processing_error``. The cuts run through
    profiles first, then events, the order the engine applies them in; decisions do not
    depend on where a batch is cut, so the rest comes out as it would have. One bad record
    costs about two passes over the batch, not one pass per record.
    """
    try:
        return engine.process(events, profiles), 0
    except Exception as error:
        records = [*profiles, *events]
        if len(records) == 1:
            result = BatchResult.empty()
            result.dead_letters.append(engine.processing_error(records[0], error))
            result.stats.dead_letters_by_reason[DeadLetterReason.processing_error.value] += 1
            return result, 1
    merged, failed = BatchResult.empty(), 1
    cut = (len(profiles) + len(events)) // 2
    p_cut, e_cut = min(cut, len(profiles)), max(0, cut - len(profiles))
    for ev, pr in ((events[:e_cut], profiles[:p_cut]), (events[e_cut:], profiles[p_cut:])):
        got, n = process_isolating(engine, ev, pr)
        merged.extend(got)
        failed += n
    return merged, failed
