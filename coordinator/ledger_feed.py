"""Keeps every member's copy of the ledger current: each node reports how many entries it holds
(its head), and the coordinator sends it the entries after that on the next training trip."""

from __future__ import annotations

from pathlib import Path

from fedloom.ledger import entries_since

HEAD_KEY = "ledger-head"
CONFIG_KEY = "ledger"


class LedgerFeed:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.heads: dict[int, int] = {}

    def config_for(self, node: int) -> dict[str, str]:
        lines = entries_since(self.path, self.heads.get(node, 0)) if self.path.exists() else []
        return {CONFIG_KEY: "\n".join(lines)} if lines else {}

    def observe(self, node: int, who: dict) -> None:
        if HEAD_KEY in who:
            self.heads[node] = int(who[HEAD_KEY])
