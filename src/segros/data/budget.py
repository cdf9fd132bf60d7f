"""Counting bad examples and stopping when there are too many.

A few undecodable images or empty captions are normal in scraped data and
are skipped; many of them mean the wrong column, a broken download or a
bad path prefix, and training on the remainder would silently be training
on something else. ``BadRecordBudget`` tells the two apart.
"""

from __future__ import annotations

import logging
from typing import Any

from segros.data.readers import BadRecord

log = logging.getLogger(__name__)


class TooManyBadRecords(ValueError):  # noqa: N818 - name fixed by the data design
    """More examples were bad than the configured share allows."""


class BadRecordBudget:
    """Counts good and bad records and raises ``TooManyBadRecords`` past ``max_share``.

    The share is only judged after ``min_seen`` records, so a couple of
    early bad ones do not stop a run; but if every one of the first
    ``all_bad_after`` records is bad the data is certainly broken and
    ``check()`` fails at once. The first ``max_examples`` bad records are
    kept (and logged as warnings) so the error can name them.
    """

    def __init__(
        self,
        max_share: float = 0.01,
        min_seen: int = 200,
        all_bad_after: int = 20,
        max_examples: int = 5,
    ) -> None:
        if not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_share must be in [0, 1], got {max_share}")
        self.max_share = max_share
        self.min_seen = min_seen
        self.all_bad_after = all_bad_after
        self.max_examples = max_examples
        self.seen = 0
        self.bad = 0
        self.examples: list[tuple[str, str]] = []

    def observe(self, record: Any) -> bool:
        """Count one record; return True if it is good (not a ``BadRecord``)."""
        self.seen += 1
        if not isinstance(record, BadRecord):
            return True
        self.bad += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((record.key, record.reason))
            log.warning("skipping bad record %s: %s", record.key, record.reason)
        else:
            log.debug("skipping bad record %s: %s", record.key, record.reason)
        return False

    @property
    def share(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def check(self) -> None:
        """Raise ``TooManyBadRecords`` if the bad share is over budget (see class docstring)."""
        all_bad = self.seen >= self.all_bad_after and self.bad == self.seen
        over = self.seen >= self.min_seen and self.share > self.max_share
        if not (all_bad or over):
            return
        examples = "; ".join(f"{key}: {reason}" for key, reason in self.examples)
        why = (
            f"all of the first {self.seen} records were bad"
            if all_bad
            else f"{self.bad} of {self.seen} records ({self.share:.2%}) were bad, "
            f"more than the allowed {self.max_share:.2%}"
        )
        raise TooManyBadRecords(f"{why}; examples: {examples}")

    def summary(self) -> str:
        """One line for the training log."""
        return f"skipped {self.bad} bad records of {self.seen} read ({self.share:.2%})"

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "bad": self.bad, "examples": [list(e) for e in self.examples]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.bad = int(state["bad"])
        self.examples = [(str(k), str(r)) for k, r in state["examples"]]
