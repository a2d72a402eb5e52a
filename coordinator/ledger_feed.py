"""Keeps every member's copy of the ledger current: each node reports how many entries it holds
(its head), and the coordinator sends it the entries after that on the next training trip.

The coordinator's newest entry always goes along, even when the member already holds it: it is the
coordinator's signed head, and a member refuses a head older than the newest entry it holds (a
truncated or rolled-back ledger), which it could not notice if nothing were sent."""

from __future__ import annotations

from pathlib import Path

from fedloom.ledger import entries_since, ledger_length
from fedloom.records import LEDGER, Who


class LedgerFeed:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.heads: dict[int, int] = {}

    def config_for(self, node: int) -> dict[str, str]:
        if not self.path.exists():
            return {}
        start = min(self.heads.get(node, 0), ledger_length(self.path) - 1)
        lines = entries_since(self.path, max(start, 0))
        return {LEDGER: "\n".join(lines)} if lines else {}

    def observe(self, node: int, who: Who) -> None:
        if who.ledger_head is not None:
            self.heads[node] = who.ledger_head
