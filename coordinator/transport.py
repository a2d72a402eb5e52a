"""Message exchange over Flower's Grid: push, then fold replies in as they arrive.

`Grid.send_and_receive` returns only when all replies are in and hands back all of them at once;
for secure aggregation we want each reply handed to the protocol as soon as it lands (so the
coordinator holds one masked vector at a time, not n), and a per-stage deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedloom import triplog
from fedloom.raystore import release_store_pages

from .stop import STOP

if TYPE_CHECKING:
    from fedloom.plan import Plan

    from .journal import Journal

log = logging.getLogger("fedloom.coordinator")


class NotEnoughNodes(RuntimeError):
    pass


def wait_for_nodes(
    grid: Grid, wanted: int, timeout: float, minimum: int = 1, poll: float = 0.5, max_poll: float = 2.0
) -> list[int]:
    """Node ids once `wanted` nodes are connected, or what is there after `timeout` (>= minimum).

    Asks every `poll` seconds after a node arrived, backing off to `max_poll` while none does: an
    idle coordinator waiting for members costs the SuperLink one call every 2 s, not two a second.
    Raises coordinator.stop.RunInterrupted when a stop is requested while it waits."""
    start = time.monotonic()
    deadline, next_note = start + timeout, start + 10.0
    triplog.note("waiting_for_nodes")
    seen, wait = -1, poll
    while True:
        STOP.check()
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted:
            return nodes
        wait = poll if len(nodes) != seen else min(max_poll, wait * 1.5)
        seen = len(nodes)
        if time.monotonic() >= next_note:
            log.info(
                "waiting for participants: %d of %d connected (%.0f s left)",
                len(nodes),
                wanted,
                deadline - time.monotonic(),
            )
            next_note += 10.0
        if time.monotonic() >= deadline:
            if len(nodes) >= minimum:
                log.warning("only %d of %d participants connected; going on without the rest", len(nodes), wanted)
                return nodes
            raise NotEnoughNodes(
                f"{len(nodes)} participant node(s) connected within {timeout:.0f} s; {minimum} needed "
                f"(the plan expects {wanted}: start more nodes, or in a simulation set num-supernodes)"
            )
        time.sleep(wait)


# Errors the SuperLink (or Flower's Grid) makes up for a message, not the member's ClientApp: the
# member may well have answered, or will once it is reachable again.
LOST_IN_TRANSIT = {
    ErrorCode.NODE_UNAVAILABLE: "missed heartbeats",
    ErrorCode.MESSAGE_UNAVAILABLE: "its reply was not fully uploaded",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "its reply expired before it was collected",
}


@dataclass
class Exchange:
    """What one round trip got back."""

    replied: set[int] = field(default_factory=set)  # nodes whose good reply was handed on
    errors: dict[int, str] = field(default_factory=dict)  # node -> why its reply is an error
    resent: dict[int, int] = field(default_factory=dict)  # node -> times its message was sent again


def exchange(
    grid: Grid,
    nodes: Iterable[int],
    build: Callable[[int], Message | None],
    timeout: float,
    on_reply: Callable[[Message], None],
    grace: float = 120.0,
    poll: float = 0.05,
    max_resends: int = 5,
    watch: Callable[[str, Exchange, list[int]], None] | None = None,
    watch_every: float = 15.0,
    max_poll: float = 0.25,
    one_at_a_time: bool = False,
    after_push: Callable[[], None] | None = None,
) -> Exchange:
    """Send `build(node)` to each node (None: nothing for it); call `on_reply` for each good reply
    as it arrives, until all are answered or `timeout`.

    A node that missed its heartbeats gets a "Node Unavailable" error from the SuperLink in its
    place, even when it holds the message and is working on it (a busy machine, a network blip);
    a reply whose upload was cut off becomes a "Message Unavailable" error. Such a node gets
    `grace` seconds (within the deadline) to be online again; then its message is built and sent
    again (members answer a repeated request with the same reply, see `participant.replay`). A
    node that does not return, or whose ClientApp failed, is dropped as before.

    Replies are polled `poll` seconds after a pull that brought one, backing off (x1.5 per empty
    pull) to `max_poll`: a reply waits at most `max_poll` to be collected, and a long trip does
    not cost the SuperLink 20 pulls a second.

    A stop request (Ctrl-C) raises coordinator.stop.RunInterrupted at the next poll.

    `watch(what, exchange, nodes)`, if given, hears "resent" (nodes sent again) as it happens and
    "waiting" (nodes still awaited) every `watch_every` seconds: the operator's live view.

    Every reply is dropped as soon as `on_reply` returns. With `one_at_a_time` (replies of d
    coordinates: masked inputs) each awaited reply is pulled on its own, so the coordinator never
    holds more than one of them, whatever number of them the SuperLink has ready: n small pulls per
    poll instead of one. `after_push()`, if given, is called after every push (the caller may let go of
    what only the messages needed; a resend builds them again)."""
    out = Exchange()
    waiting: dict[str, int] = {}  # message id -> node

    def push(targets: list[int]) -> None:
        msgs = [(n, m) for n in targets if (m := build(n)) is not None]
        triplog.note("push", nodes=[n for n, _ in msgs])
        pushed = set(grid.push_messages([m for _, m in msgs]))  # pushing gives each message its id
        for node, msg in msgs:
            if msg.metadata.message_id in pushed:
                waiting[msg.metadata.message_id] = node
            else:
                out.errors[node] = "the SuperLink did not accept the message"
        del msgs
        if after_push is not None:
            after_push()

    def fold(reply: Message) -> None:
        _fold_reply(reply, waiting, away, out, on_reply, grace, max_resends)

    push(list(nodes))
    away: dict[int, tuple[str, float]] = {}  # node -> (the error it got, when to stop waiting for it)
    deadline = time.monotonic() + timeout
    next_check, wait = 0.0, poll
    next_note = time.monotonic() + watch_every
    while (waiting or away) and time.monotonic() < deadline:
        STOP.check()
        got = _pull_and_fold(grid, waiting, fold, one_at_a_time)
        wait = poll if got else min(max_poll, wait * 1.5)
        if away and time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            back = _recheck_away(grid, away, out, grace)
            if back:
                push(back)
                if watch is not None:
                    watch("resent", out, back)
        if watch is not None and time.monotonic() >= next_note:
            next_note = time.monotonic() + watch_every
            watch("waiting", out, sorted({*waiting.values(), *away}))
        if waiting or away:
            time.sleep(wait)
    out.errors.update({node: reason for node, (reason, _) in away.items()})
    return out


def _pull_and_fold(grid: Grid, waiting: dict[str, int], fold: Callable[[Message], None], one: bool = False) -> int:
    """Pull what is ready of the awaited replies and fold each in, dropping it right after; how many came.

    `one`: pull the awaited replies one message id at a time."""
    batches = [[mid] for mid in list(waiting)] if one else [list(waiting)] if waiting else []
    count = 0
    for ids in batches:
        got = list(grid.pull_messages(ids))
        count += len(got)
        while got:
            # in a simulation, Ray's store pages this process wrote or read (the messages sent, the
            # replies folded in) are not ours to keep: dropped before each reply and after the last
            release_store_pages()
            fold(got.pop(0))  # the list lets go of each reply once it is folded in
        release_store_pages()
    return count


def _fold_reply(
    reply: Message,
    waiting: dict[str, int],
    away: dict[int, tuple[str, float]],
    out: Exchange,
    on_reply: Callable[[Message], None],
    grace: float,
    max_resends: int,
) -> None:
    """Hand a good reply on; an error lost in transit puts its node `away` (to be asked again), any other drops it.

    A reply to no message still awaited (a duplicate, or one to an earlier send) is ignored."""
    node = waiting.pop(reply.metadata.reply_to_message_id, None)
    if node is None:
        return
    triplog.note("reply", node=node)
    if not reply.has_error():
        out.replied.add(node)
        on_reply(reply)
    elif reply.error.code in LOST_IN_TRANSIT and out.resent.get(node, 0) < max_resends:
        why = LOST_IN_TRANSIT[reply.error.code]
        log.warning("participant node %s did not answer (%s); asking again once it is online", node, why)
        away[node] = (reply.error.reason, time.monotonic() + grace)
    else:
        out.errors[node] = reply.error.reason
        log.warning("participant node %s failed: %s", node, reply.error.reason)


def _recheck_away(grid: Grid, away: dict[int, tuple[str, float]], out: Exchange, grace: float) -> list[int]:
    """Drop the away nodes whose grace ran out; return those online again (counted as resent) to be sent again."""
    for node in [n for n, (_, until) in away.items() if until <= time.monotonic()]:
        out.errors[node] = away.pop(node)[0]
        log.warning("participant node %s did not come back within %.0f s; going on without it", node, grace)
    back = sorted(set(away) & set(grid.get_node_ids()))
    for node in back:
        del away[node]
        out.resent[node] = out.resent.get(node, 0) + 1
        log.warning("participant node %s is back; sending its message again", node)
    return back


def told_exchange(
    grid: Grid,
    nodes: list[int],
    build: Callable[[int], Message | None],
    on_reply: Callable[[Message], None],
    plan: Plan,
    journal: Journal,
    round_: int,
    stage: str,
    asked: list[int] | None = None,
    one_at_a_time: bool = False,
    after_push: Callable[[], None] | None = None,
) -> Exchange:
    """One trip (`exchange` with the plan's timeout and grace), told on the operator's console: the
    stage line with who is `asked` (default: every node) before it, live waits during, the outcome after."""
    asked = list(nodes) if asked is None else asked
    journal.stage(round_, stage, asked)
    trip = exchange(
        grid,
        nodes,
        build,
        plan.stage_timeout,
        on_reply,
        plan.reconnect_grace,
        watch=journal.watcher(round_, stage),
        one_at_a_time=one_at_a_time,
        after_push=after_push,
    )
    journal.trip_done(round_, stage, asked, trip)
    return trip
