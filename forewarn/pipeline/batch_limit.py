"""How many records the scoring worker's next read may take.

A live stream is read in batches of at most ``batch_size``: a batch is one transaction, and a
small one keeps the time from arrival to commit short. A backlog (a restart, a replay, a
burst) is read in larger batches, up to ``catch_up``: a transaction's fixed cost (its
commit's round trips) is then shared by more records, so the worker catches up sooner. The
limit doubles while reads come back full (more was waiting) and halves back while they come
back at most half full.

>>> limit = BatchLimit(500, 5000)
>>> [limit.after_read(n) for n in (500, 1000, 2000, 4000, 5000, 800, 300, 100)]
[1000, 2000, 4000, 5000, 5000, 2500, 1250, 625]
"""

from __future__ import annotations


class BatchLimit:
    def __init__(self, batch_size: int, catch_up: int) -> None:
        self.batch_size = batch_size
        self.catch_up = max(batch_size, catch_up)
        self.limit = batch_size

    def after_read(self, n: int) -> int:
        """The limit for the read after one that returned ``n`` records."""
        if n >= self.limit:
            self.limit = min(self.catch_up, self.limit * 2)
        elif n <= self.limit // 2:
            self.limit = max(self.batch_size, self.limit // 2)
        return self.limit
