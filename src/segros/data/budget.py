"""Counting bad examples and stopping when there are too many.

A few undecodable images or empty captions are normal in scraped data and
are skipped; many of them mean the wrong column, a broken download or a
bad path prefix, and training on the remainder would silently be training
on something else. ``BadRecordBudget`` tells the two apart.

The share is judged over *distinct* records: when the caller passes each
record's dataset index (``RecordBatches`` does), a record read again in a
later epoch is skipped again if it is bad but not counted again, so a
folder with 0.66 % bad files stays at 0.66 % however many epochs are run.
"""

from __future__ import annotations

import base64
import logging
import zlib
from typing import Any

from segros.data.readers import BadRecord

log = logging.getLogger(__name__)


class TooManyBadRecords(ValueError):  # noqa: N818 - name fixed by the data design
    """More examples were bad than the configured share allows."""


class BadRecordBudget:
    """Counts good and bad records and raises ``TooManyBadRecords`` past ``max_share``.

    The share is only judged after ``min_seen`` distinct records (or after
    ``pass_size`` of them, one full pass over a smaller dataset, when the
    caller sets it), so a couple of early bad ones do not stop a run; but if
    every one of the first ``all_bad_after`` reads is bad the data is
    certainly broken and ``check()`` fails at once. The first
    ``max_examples`` bad records are kept (and logged as warnings) so the
    error can name them.

    Counters: ``seen`` / ``bad`` count every read (a bad record read in three
    epochs is skipped three times); ``records_read`` / ``bad_records`` count
    distinct records, and the share is ``bad_records / records_read``.
    Records are told apart by the ``index`` given to :meth:`observe`; without
    one, every read counts as a new record.
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
        self.pass_size: int | None = None  # records in one pass of this process (set by RecordBatches)
        self.seen = 0
        self.bad = 0
        self.records_read = 0
        self.bad_records = 0
        self.examples: list[tuple[str, str]] = []
        self._read = bytearray()  # bit i set: index i has been read (and counted) before

    def _first_read(self, index: int) -> bool:
        """Mark ``index`` as read; True if it had not been read before."""
        byte, bit = divmod(int(index), 8)
        if byte >= len(self._read):
            self._read.extend(bytes(byte + 1 - len(self._read)))
        if self._read[byte] >> bit & 1:
            return False
        self._read[byte] |= 1 << bit
        return True

    def observe(self, record: Any, index: int | None = None) -> bool:
        """Count one record read at dataset position ``index``; return True if it is good."""
        self.seen += 1
        good = not isinstance(record, BadRecord)
        first = index is None or self._first_read(index)
        if first:
            self.records_read += 1
        if good:
            return True
        self.bad += 1
        if not first:
            log.debug("skipping bad record %s again: %s", record.key, record.reason)
            return False
        self.bad_records += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((record.key, record.reason))
            log.warning("skipping bad record %s: %s", record.key, record.reason)
        else:
            log.debug("skipping bad record %s: %s", record.key, record.reason)
        return False

    @property
    def share(self) -> float:
        """Share of bad records among the distinct records read so far."""
        return self.bad_records / self.records_read if self.records_read else 0.0

    def check(self, share: bool = True) -> None:
        """Raise ``TooManyBadRecords`` if the data is over budget (see the class docstring).

        ``share=False`` only checks the fail-fast rule (every read so far bad), which may be
        called at each bad record; the share itself should be judged at points that do not
        depend on whether the last record was bad (``RecordBatches`` judges it every
        ``batch_size`` reads), or every bad record would be judged at a local peak.
        """
        all_bad = self.seen >= self.all_bad_after and self.bad == self.seen
        enough = min(self.min_seen, self.pass_size) if self.pass_size else self.min_seen
        over = share and self.records_read >= enough and self.share > self.max_share
        if not (all_bad or over):
            return
        examples = "; ".join(f"{key}: {reason}" for key, reason in self.examples)
        if all_bad:
            distinct = "" if self.records_read == self.seen else f" ({self.records_read} distinct)"
            why = f"all of the first {self.seen} records{distinct} were bad"
        else:
            why = (
                f"{self.bad_records} of {self.records_read} records ({self.share:.2%}) were bad, "
                f"more than the allowed {self.max_share:.2%}"
            )
        raise TooManyBadRecords(f"{why}; examples: {examples}")

    def summary(self) -> str:
        """One line for the training log."""
        if (self.seen, self.bad) == (self.records_read, self.bad_records):
            return f"skipped {self.bad} bad records of {self.seen} read ({self.share:.2%})"
        return (
            f"skipped {self.bad} bad reads of {self.seen}: {self.bad_records} distinct bad records "
            f"of {self.records_read} read ({self.share:.2%})"
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-compatible state (the read-index bitmap is zlib-compressed and base64-encoded)."""
        return {
            "seen": self.seen,
            "bad": self.bad,
            "records_read": self.records_read,
            "bad_records": self.bad_records,
            "read": base64.b64encode(zlib.compress(bytes(self._read))).decode("ascii"),
            "examples": [list(e) for e in self.examples],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.bad = int(state["bad"])
        # states written before distinct counting: every read counted as a record
        self.records_read = int(state.get("records_read", self.seen))
        self.bad_records = int(state.get("bad_records", self.bad))
        read = state.get("read")
        self._read = bytearray(zlib.decompress(base64.b64decode(read))) if read else bytearray()
        self.examples = [(str(k), str(r)) for k, r in state["examples"]]
