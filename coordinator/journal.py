"""The run's story for people: what happens, as it happens, in files another process can read.

In deployment the ServerApp runs in a process Flower starts (`flwr-serverapp`); the operator watches
`fedloom coordinator start` and may ask `fedloom status STATE_DIR` from another terminal. Files are
the channel all three can read without a new server:

  STATE/events.jsonl  one JSON object per event (stage started, waiting, resent, refusal, round done,
                      done, ...), appended; the coordinator's console prints each as a line
  STATE/status.json   the latest state (round, stage, who answered / is awaited, last refusals,
                      rounds done, total wall time across restarts), replaced atomically

Every event is also logged on the `fedloom.coordinator` logger, so `flwr log` shows it.
Without a state directory (a simulation) only the log lines remain.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedloom.files import atomic_write_bytes

from .summary import RunSummary

log = logging.getLogger("fedloom.coordinator")

EVENTS = "events.jsonl"
STATUS = "status.json"
KEEP_REFUSALS = 10  # status.json keeps the latest few; events.jsonl and summary.json keep all
REPEAT_WAITING = 60.0  # seconds between two identical "awaiting" lines

# refusals that mean the members hold a history this state directory does not (issue 13, item 4)
FOREIGN_HISTORY_RULES = ("round.replay", "ledger.fork", "ledger.truncated")


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """status.json's content, or None if the coordinator never wrote one (or it is unreadable)."""
    try:
        return json.loads((state_dir / STATUS).read_text())
    except (OSError, ValueError):
        return None


def mark(state_dir: Path, state: str, **fields: Any) -> None:
    """Set status.json's `state` (e.g. "stopped" by the service after Ctrl-C), keeping the rest."""
    status = read_status(state_dir) or {}
    status.update(state=state, updated=time.time(), **fields)
    atomic_write_bytes(state_dir / STATUS, (json.dumps(status, indent=2) + "\n").encode())


class Journal:
    """Writes events and status for one run (one process); a no-op on disk without a state dir."""

    def __init__(self, state_dir: Path | None, rounds: int, names: dict[int, str] | None = None) -> None:
        self.state_dir = state_dir
        self.names = dict(names or {})  # member id -> name (from the roster)
        self.member_of: dict[int, int] = {}  # node id -> member id, filled in by the round backend
        previous = read_status(state_dir) if state_dir else None
        # wall time of earlier starts of this run: a resume continues the clock, a new run starts it at zero
        going_on = previous is not None and previous.get("state") not in ("done", None)
        self.seconds_before = float(previous.get("wall_seconds") or 0.0) if going_on else 0.0
        self._t0 = time.monotonic()
        self.started_at = previous.get("started_at") if going_on and previous else None
        self.started_at = self.started_at or datetime.now(UTC).isoformat(timespec="seconds")
        self.status: dict[str, Any] = {
            "state": "starting",
            "started_at": self.started_at,
            "rounds_planned": rounds,
            "rounds_done": 0,
            "round": None,
            "stage": None,
            "answered": [],
            "awaiting": [],
            "last_refusals": [],
            "rounds_skipped": [],
        }

    def wall_seconds(self) -> float:
        """Seconds this run has taken, across coordinator restarts."""
        return self.seconds_before + time.monotonic() - self._t0

    def who(self, node: int) -> str:
        """A member's name for a node id, or "node N" before the node said who it is."""
        member = self.member_of.get(node)
        if member is None:
            return f"node {node}"
        return self.names.get(member, f"member {member}")

    def member(self, member: int) -> str:
        return self.names.get(member, f"member {member}")

    def event(self, kind: str, text: str, level: int = logging.INFO, **fields: Any) -> None:
        """Record one event: `text` is its line for people (logged as is), `fields` its facts."""
        log.log(level, "%s", text)
        now = time.time()
        self.status.update(updated=now, wall_seconds=round(self.wall_seconds(), 3))
        if self.state_dir is None:
            return
        line = json.dumps({"time": now, "kind": kind, "text": text, **fields}, default=str)
        with (self.state_dir / EVENTS).open("a") as f:
            f.write(line + "\n")
        atomic_write_bytes(self.state_dir / STATUS, (json.dumps(self.status, indent=2, default=str) + "\n").encode())

    # ----------------------------------------------------------------- the events a run has
    def started(self, nodes: int, first: int, secure: bool, out_dir: Path) -> None:
        self.status.update(state="running", round=first, out_dir=str(out_dir), secure=secure, rounds_done=first - 1)
        mode = "secure aggregation" if secure else "PLAINTEXT aggregation (secure OFF)"
        begin = "starting at round 1" if first == 1 else f"resuming at round {first}"
        self.event(
            "started",
            f"{nodes} participant node(s) connected; {self.status['rounds_planned']} rounds, {mode}, {begin}",
            nodes=nodes,
            first=first,
            secure=secure,
        )

    def stage(self, round_: int, stage: str, nodes: list[int]) -> None:
        asked = sorted(self.who(n) for n in nodes)
        self.status.update(round=round_, stage=stage, stage_since=time.time(), awaiting=asked, answered=[])
        self.event("stage", f"round {round_} · {stage}: asked {_names(asked)}", round=round_, stage=stage, asked=asked)

    def waiting(self, round_: int, stage: str, answered: list[int], awaited: list[int]) -> None:
        ans, wait = sorted(self.who(n) for n in answered), sorted(self.who(n) for n in awaited)
        self.status.update(answered=ans, awaiting=wait)
        self.event(
            "waiting",
            f"round {round_} · {stage}: {len(ans)} answered, awaiting {_names(wait)}",
            round=round_,
            stage=stage,
            answered=ans,
            awaiting=wait,
        )

    def watcher(self, round_: int, stage: str) -> Callable[[str, Any, list[int]], None]:
        """The live view of one trip (coordinator.transport.exchange's `watch`)."""

        last: dict[str, Any] = {"seen": None, "at": 0.0}

        def watch(what: str, exchange: Any, nodes: list[int]) -> None:
            if what == "resent":
                for node in nodes:
                    self.resent(round_, stage, node)
                return
            seen = (len(exchange.replied), tuple(nodes))
            # a line when something changed, else once a minute: alive, not a flood
            if nodes and (seen != last["seen"] or time.monotonic() - last["at"] >= REPEAT_WAITING):
                last.update(seen=seen, at=time.monotonic())
                self.waiting(round_, stage, sorted(exchange.replied), nodes)

        return watch

    def trip_done(self, round_: int, stage: str, asked: list[int], exchange: Any) -> None:
        """A trip's end: who answered, who did not and why."""
        late = "no reply before the deadline"
        missing = {n: exchange.errors.get(n, late) for n in asked if n not in exchange.replied}
        self.stage_done(round_, stage, sorted(exchange.replied), missing)

    def resent(self, round_: int, stage: str, node: int) -> None:
        who = self.who(node)
        self.event(
            "resent",
            f"round {round_} · {stage}: {who} is back online; its message was sent again",
            round=round_,
            stage=stage,
            member=who,
        )

    def stage_done(self, round_: int, stage: str, answered: list[int], missing: dict[int, str]) -> None:
        ans = sorted(self.who(n) for n in answered)
        gone = dict(sorted((self.who(n), why) for n, why in missing.items()))
        self.status.update(answered=ans, awaiting=[])
        text = f"round {round_} · {stage}: {len(ans)} answered"
        if gone:
            text += "; no answer from " + ", ".join(f"{w} ({why})" if why else w for w, why in gone.items())
        self.event("stage_done", text, round=round_, stage=stage, answered=ans, missing=gone)

    def refusal(self, round_: int, member: int, rule: str, reason: str) -> None:
        who = self.member(member)
        entry = {"round": round_, "member": who, "rule": rule, "reason": reason}
        self.status["last_refusals"] = [*self.status["last_refusals"], entry][-KEEP_REFUSALS:]
        self.event("refusal", f"round {round_}: {who} refused: [{rule}] {reason}", logging.WARNING, **entry)

    def round_done(self, row: dict[str, Any], rounds_done: int, eval_of_previous: float | None) -> None:
        r = row["round"]
        self.status.update(rounds_done=rounds_done, stage=None, awaiting=[], answered=[])
        if row.get("skipped"):
            self.status["rounds_skipped"] = [*self.status["rounds_skipped"], {"round": r, "reason": row["skipped"]}]
            text = f"round {r} skipped: {row['skipped']}"
        else:
            aggregated = [self.member(m) for m in row.get("aggregated", [])]
            text = f"round {r} done in {row['wall_seconds']:.1f} s: aggregated {len(aggregated)}"
            text += f" ({', '.join(aggregated)})"
            if row.get("train_loss") is not None:
                text += f", train loss {row['train_loss']:.4f}"
        if eval_of_previous is not None:
            text += f"; accuracy of the model sent in round {r}: {eval_of_previous:.4f}"
        self.event("round", text, round=r, skipped=row.get("skipped"), train_loss=row.get("train_loss"))

    def finished(self, summary: RunSummary) -> None:
        state = "interrupted" if summary.interruption else "done"
        self.status.update(state=state, stage=None, awaiting=[], rounds_done=summary.rounds_completed)
        acc = summary.final.accuracy
        text = (
            f"{state}: {summary.rounds_completed} of {summary.rounds_planned} rounds completed"
            + (f", final accuracy {acc:.4f}" if acc is not None else "")
            + f", outputs in {summary.out_dir}"
        )
        self.event(state, text, rounds_completed=summary.rounds_completed, out_dir=summary.out_dir)

    def refused_to_go_on(self, message: str) -> None:
        """The run cannot make progress and stops (e.g. the members hold a history this state dir lacks)."""
        self.status.update(state="refused", stage=None, awaiting=[], message=message)
        self.event("refused", message, logging.ERROR)


def _names(who: list[str]) -> str:
    if not who:
        return "nobody"
    return f"{len(who)} ({', '.join(who)})" if len(who) <= 8 else f"{len(who)} ({', '.join(who[:8])}, …)"


class EventTail:
    """Reads the events appended to STATE/events.jsonl since it was made (the console's feed)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / EVENTS
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        for line in data[:end].splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue
