"""Message exchange over Flower's Grid: push, then fold replies in as they arrive.

`Grid.send_and_receive` returns only when all replies are in and hands back all of them at once;
for secure aggregation we want each reply handed to the protocol as soon as it lands (so the
coordinator holds one masked vector at a time, not n), and a per-stage deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger("fedloom.coordinator")


class NotEnoughNodes(RuntimeError):
    pass


def wait_for_nodes(grid: Grid, wanted: int, timeout: float, minimum: int = 1, poll: float = 0.2) -> list[int]:
    """Node ids once `wanted` nodes are connected, or what is there after `timeout` (>= minimum)."""
    start = time.monotonic()
    deadline, next_note = start + timeout, start + 10.0
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted:
            return nodes
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
        time.sleep(poll)


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    on_reply: Callable[[Message], None],
    poll: float = 0.05,
) -> tuple[set[int], dict[int, str]]:
    """Send `messages`; call `on_reply` for each good reply as it arrives, until all answered or
    `timeout`. Returns (nodes that replied, {node: error} for replies that carried an error)."""
    msgs = list(messages)
    ids = set(grid.push_messages(msgs))
    del msgs
    replied: set[int] = set()
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while ids and time.monotonic() < deadline:
        got = list(grid.pull_messages(ids))
        for reply in got:
            ids.discard(reply.metadata.reply_to_message_id)
            node = reply.metadata.src_node_id
            if reply.has_error():
                errors[node] = reply.error.reason
                log.warning("participant node %s failed: %s", node, reply.error.reason)
                continue
            replied.add(node)
            on_reply(reply)
        del got
        if ids:
            time.sleep(poll)
    return replied, errors
