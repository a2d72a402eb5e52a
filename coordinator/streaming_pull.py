"""Pull a reply from the SuperLink holding its arrays once, not twice (deployment's ServerApp).

Flower 1.41's `HttpGrid.pull_messages` first pulls every object of a message (a masked input of
4d bytes arrives as 5 MB chunks), then inflates the message from that dict; the inflated chunks are
kept until the whole message is built, so a 4d-byte reply costs about 2 × 4d at once, plus the
passing copies of the chunks pulled concurrently. With the round's accumulator (4d) that was the
coordinator's peak (4.4 × 4d above idle at d = 10^7).

Here the small objects of the tree (the message, its records and arrays) are pulled first, as
Flower does; the chunks of each array are pulled when that array is built, and dropped once it is:
the reply is then held once while it arrives, plus one array part (4 MiB, `fedloom.records`) in
flight, and the HTTP responses that carried a part are collected as soon as it is built (they sit
in reference cycles: left to Python's collector, a whole reply's bodies outlived it). Same
requests, same confirmations, same error message when an object cannot be pulled.

Installed on the grid Flower hands the ServerApp in deployment (`stream_pulls`); the simulation's
in-memory grid has no such copies and is left alone.
"""

from __future__ import annotations

import gc
import logging
import time
import types
from collections.abc import Callable, Iterable

import httpx
from flwr.app import Message, Metadata
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest, ObjectTree  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesRequest  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.constant import (
    PULL_BACKOFF_CAP,
    PULL_INITIAL_BACKOFF,
    PULL_MAX_TIME,
    PULL_MAX_TRIES_PER_OBJECT,
    SYSTEM_MESSAGE_TYPE,
)
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_object import InflatableObject
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    ObjectUnavailableError,
    get_object_head_values_from_object_content,
    inflatable_class_registry,
    pull_objects,
)
from flwr.superlink.grid.http_grid import ERROR_MESSAGE_PULL_MESSAGES_PAYLOAD_TOO_LARGE, HttpGrid
from google.protobuf.message import DecodeError

from fedloom.malloc import give_back_free_heap

log = logging.getLogger("fedloom.coordinator")
UNAVAILABLE = (  # Flower's wording, so the transport's handling and the operator's logs read the same
    "Reply message objects are unavailable. The sender may not have completed the upload before the "
    "object-push session expired. "
)
# what objects that do not make a message raise (a protobuf DecodeError is none of the builtins)
UNBUILDABLE = (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError, DecodeError)
SAME_METADATA = ("run_id", "src_node_id", "dst_node_id", "reply_to_message_id", "message_type")
COLLECT_AFTER = 1 << 20  # chunk bytes pulled before the transport's garbage is collected
CHUNK_DEPTH = 4  # Message > RecordDict > ArrayRecord > Array > ArrayChunk: chunks are pulled late


def stream_pulls(grid: Grid) -> bool:
    """Make `grid.pull_messages` this module's on a deployment grid; True if it was one."""
    if not isinstance(grid, HttpGrid):
        return False
    grid.pull_messages = types.MethodType(pull_messages, grid)  # type: ignore[method-assign]
    return True


def pull_messages(grid: HttpGrid, message_ids: Iterable[str]) -> list[Message]:
    """`HttpGrid.pull_messages` (Flower 1.41) with each message inflated as its chunks arrive."""
    run_id = grid.run.run_id
    try:
        res = grid._runtime_client.PullMessages(PullAppMessagesRequest(message_ids=message_ids))
    except httpx.HTTPStatusError as e:
        if e.response.status_code == httpx.codes.REQUEST_ENTITY_TOO_LARGE:
            log.error(ERROR_MESSAGE_PULL_MESSAGES_PAYLOAD_TOO_LARGE)
            return []
        raise
    fetch = make_pull_object_fn_protobuf(
        pull_object_protobuf=grid._runtime_client.PullObject, node=grid.node, run_id=run_id
    )

    out: list[Message] = []
    for msg_proto, tree in zip(res.messages_list, res.message_object_trees, strict=True):
        msg_id, reply_to = msg_proto.metadata.message_id, msg_proto.metadata.reply_to_message_id
        deadline = time.monotonic() + PULL_MAX_TIME  # one budget per message, as Flower's pull has

        def pull(ids: list[str], late: bool, deadline: float = deadline) -> dict[str, bytes]:
            # an array's chunks one after the other, in this thread: each chunk in flight costs its
            # HTTP body, the parsed response and the content (3 x 5 MB); the small objects as
            # Flower pulls them, several at once
            if late:
                return {oid: _pull_here(fetch, oid, deadline) for oid in ids}
            return pull_objects(object_ids=ids, pull_object_fn=fetch) if ids else {}

        try:
            message = inflate_streaming(tree, pull)
            if not isinstance(message, Message):
                raise TypeError(f"the root object is a {type(message).__name__}, not a Message")
            _check_metadata(message, msg_proto.metadata)
        except ObjectPullError as e:
            out.append(_error_reply(grid, run_id, reply_to, ErrorCode.MESSAGE_UNAVAILABLE, UNAVAILABLE + str(e)))
            continue
        except UNBUILDABLE as e:
            # a member's upload that is not a well-formed message of its own (Flower's pull raises
            # here and ends the run): that member's reply is an error, the round goes on without it
            why = f"{type(e).__name__}: {str(e)[:200]}"
            log.warning("a reply to message %s could not be rebuilt (%s)", reply_to, why)
            out.append(
                _error_reply(grid, run_id, reply_to, ErrorCode.UNKNOWN, f"the reply could not be rebuilt ({why})")
            )
            _confirm(grid, run_id, msg_id)  # its objects may go: it will not be pulled again
            continue
        _confirm(grid, run_id, msg_id)
        message.metadata.__dict__["_message_id"] = msg_id
        out.append(message)
    return out


def _confirm(grid: HttpGrid, run_id: int, msg_id: str) -> None:
    grid._runtime_client.ConfirmMessageReceived(
        ConfirmMessageReceivedRequest(node=grid.node, run_id=run_id, message_object_id=msg_id)
    )


def _check_metadata(message: Message, vouched: object) -> None:
    """The rebuilt message's addressing is the member's own upload; the SuperLink's record of the
    message is what it checked (sender, run, the request answered). A member whose upload names
    another sender or request would take that node's place in the trip: refused."""
    for name in SAME_METADATA:
        if getattr(message.metadata, name) != getattr(vouched, name):
            raise ValueError(f"the message's {name} is not the one the SuperLink recorded")


def inflate_streaming(tree: ObjectTree, pull: Callable[[list[str], bool], dict[str, bytes]]) -> InflatableObject:
    """The object at the root of `tree`, built bottom-up as Flower's `inflate_object_from_contents`
    builds it, but with the objects at CHUNK_DEPTH pulled (those of one parent together) only when
    their parent is built, and every content and child dropped as soon as nothing left needs it.
    `pull(ids, late)` returns those objects' contents; `late` marks the chunks."""
    shallow = [node.object_id for node, depth in _nodes(tree) if depth < CHUNK_DEPTH]
    contents = pull(list(dict.fromkeys(shallow)), False)
    uses = _uses(tree)
    built: dict[str, InflatableObject] = {}  # objects the tree names again further on
    pulled = 0  # chunk bytes since the transport's garbage was last collected

    def build(node: ObjectTree, depth: int) -> InflatableObject:
        nonlocal pulled
        oid = node.object_id
        uses[oid] -= 1
        if oid in built:
            return built.pop(oid) if uses[oid] == 0 else built[oid]
        if depth + 1 >= CHUNK_DEPTH and node.children:
            late = [c.object_id for c in node.children if c.object_id not in contents and c.object_id not in built]
            fresh = pull(list(dict.fromkeys(late)), True)
            pulled += sum(len(c) for c in fresh.values())
            contents.update(fresh)
        content = contents.pop(oid)
        obj_type, child_ids, _ = get_object_head_values_from_object_content(content)
        by_id = {c.object_id: c for c in node.children}
        if set(child_ids) != set(by_id):
            raise ValueError(f"object {oid[:16]}: its children are not those of the message's object tree")
        children = {cid: build(by_id[cid], depth + 1) for cid in dict.fromkeys(child_ids)}  # Flower's order
        obj = inflatable_class_registry[obj_type].inflate(content, children=children)
        del content, children
        if pulled >= COLLECT_AFTER:
            _drop_transport_garbage()
            pulled = 0
        if uses[oid] > 0:
            built[oid] = obj
        return obj

    return build(tree, 0)


def _uses(tree: ObjectTree) -> dict[str, int]:
    """How many times `build` reaches each object: a repeated object's subtree is built once, so
    its descendants are counted from its first place only (else they would be kept to the end)."""
    uses: dict[str, int] = {}

    def visit(node: ObjectTree) -> None:
        seen = node.object_id in uses
        uses[node.object_id] = uses.get(node.object_id, 0) + 1
        if not seen:
            for child in node.children:
                visit(child)

    visit(tree)
    return uses


def _drop_transport_garbage() -> None:
    """Free what carried an array's chunks now. The HTTP responses they came in sit in reference
    cycles (httpx), which only the cyclic collector frees: traced in the ServerApp, a whole reply's
    response bodies (1 x 4d) waited for its next collection, until the trip's end. Then the
    heap's free pages go back to the OS (fedloom.malloc). About a millisecond, once per MiB of
    chunks (COLLECT_AFTER), so many small arrays do not each pay it."""
    gc.collect(1)  # the young generations: the responses of this array's chunks are a moment old
    give_back_free_heap()


def _nodes(tree: ObjectTree, depth: int = 0) -> Iterable[tuple[ObjectTree, int]]:
    for child in tree.children:
        yield from _nodes(child, depth + 1)
    yield tree, depth


def _pull_here(fetch: Callable[[str], bytes], oid: str, deadline: float) -> bytes:
    """One object, retried as Flower's `pull_objects` retries it (backoff up to its caps), within
    the message's one deadline: a member that uploads slowly cannot stretch it chunk by chunk."""
    delay = PULL_INITIAL_BACKOFF
    for _ in range(PULL_MAX_TRIES_PER_OBJECT):
        try:
            return fetch(oid)
        except ObjectUnavailableError:
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, PULL_BACKOFF_CAP)
    raise ObjectPullError(oid, "timeout or retry limit reached")


def _error_reply(grid: HttpGrid, run_id: int, reply_to: str, code: int, reason: str) -> Message:
    """An error reply in place of a message that could not be pulled or built (Flower's form)."""
    return make_message(
        metadata=Metadata(
            run_id=run_id,
            message_id="",
            src_node_id=grid.node.node_id,
            dst_node_id=grid.node.node_id,
            message_type=SYSTEM_MESSAGE_TYPE,
            group_id="",
            ttl=0,
            reply_to_message_id=reply_to,
            created_at=now().timestamp(),
        ),
        error=Error(code=code, reason=reason),
    )
