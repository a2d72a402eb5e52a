"""How a message's arrays cross the Simulation Engine (Ray) without copies, and leave the RSS after.

Ray pickles every Message with protocol 5 and a buffer callback, writes the out-of-band buffers
into its object store and hands them back as views of the store (zero-copy). The tests below use
that same mechanism (`pickle.dumps(..., buffer_callback=...)`, `pickle.loads(..., buffers=...)`)
without starting Ray; `fedloom bench memory --mode simulation` measures the whole path.
"""

from __future__ import annotations

import copy
import mmap
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, Metadata, RecordDict

from console.bench.memory import _field
from fedloom import records as rec
from fedloom.array_pickling import pickle_arrays_out_of_band
from fedloom.raystore import STORE_PREFIX, release_store_pages, store_mappings

MIB = 1 << 20


def _ray_like_round_trip(obj: object) -> tuple[object, list[pickle.PickleBuffer], int]:
    """What Ray's serializer does: (the object rebuilt over the same buffers, the buffers, in-band bytes)."""
    buffers: list[pickle.PickleBuffer] = []
    inband = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(inband, buffers=buffers), buffers, len(inband)


def test_a_records_array_crosses_out_of_band_and_arrives_as_a_view_of_the_senders_buffer():
    pickle_arrays_out_of_band()  # what importing fedloom.records does (idempotent)
    vec = np.arange(MIB, dtype=np.float32)
    content = RecordDict({rec.MODEL: rec.vector_record(vec)})
    sent = content[rec.MODEL][rec.VECTOR].data
    got, buffers, inband = _ray_like_round_trip(content)
    assert len(buffers) == 1 and inband < 4096  # the 4 MiB are not in the pickle stream (in band: all of them)
    received = rec.read_vector(got, rec.MODEL)
    np.testing.assert_array_equal(received, vec)
    # no copy on arrival: the received vector lies in the buffer the sender handed over (Ray: the store)
    assert np.shares_memory(received, np.frombuffer(sent, dtype=np.uint8))
    assert not received.flags.writeable  # a read-only view: nobody writes into the store


def test_a_masked_input_in_a_protocol_record_is_read_in_place_after_crossing():
    raw = os.urandom(2 * MIB)
    record = rec.protocol_record([b"key bundle", raw], whole=True)  # simulation: whole messages
    assert sorted(record) == ["0", "1"]
    got, buffers, _ = _ray_like_round_trip(RecordDict({rec.PROTOCOL: record}))
    assert len(buffers) == 2
    views = rec.protocol_views(got, max_bytes=4 * MIB)
    assert [bytes(v) for v in views] == [b"key bundle", raw]
    assert np.shares_memory(np.frombuffer(views[1], dtype=np.uint8), np.frombuffer(buffers[1], dtype=np.uint8))
    with pytest.raises(ValueError, match="longer than"):  # the cap holds for a whole message too
        rec.protocol_views(got, max_bytes=MIB)


def test_pickling_without_buffers_and_deepcopy_still_give_bytes():
    array = rec.vector_record(np.ones(1000, dtype=np.float32))[rec.VECTOR]
    viewed, _, _ = _ray_like_round_trip(array)
    assert isinstance(viewed.data, memoryview)
    for again in (pickle.loads(pickle.dumps(viewed, protocol=5)), pickle.loads(pickle.dumps(viewed, protocol=4))):
        assert isinstance(again.data, bytes) and again.data == array.data
    assert copy.deepcopy(viewed).data == array.data  # protocol 4 underneath: a memoryview would not pickle
    np.testing.assert_array_equal(viewed.numpy(), np.ones(1000, dtype=np.float32))  # Flower's own reader


def test_a_reply_message_crosses_with_its_metadata_and_content():
    meta = Metadata(1, "reply", 3, 1, "asked", "", time.time(), 600, "train")  # a member's reply
    out = Message(
        RecordDict({rec.PROTOCOL: rec.protocol_record([bytes(range(256)) * 4096], whole=True)}), metadata=meta
    )
    got, buffers, _ = _ray_like_round_trip(out)
    assert len(buffers) == 1 and got.metadata.src_node_id == 3 and got.metadata.reply_to_message_id == "asked"
    assert bytes(rec.protocol_views(got.content)[0]) == bytes(range(256)) * 4096


def test_only_shared_mappings_of_rays_store_are_released():
    maps = "\n".join(
        [
            "7f037d1a0000-7f0540000000 rw-s 00000000 00:1b 187   /dev/shm/plasmaavddlz (deleted)",
            "7f0540000000-7f0541000000 rw-p 00000000 00:1b 188   /dev/shm/plasmaprivate",  # private: never
            "7f05939d7000-7f05939de000 r--s 00000000 fe:00 338   /usr/lib/gconv/gconv-modules.cache",
            "7f05939de000-7f05939df000 rw-p 00000000 00:00 0",
            "7f0600000000-7f0610000000 rw-s 00000000 08:01 99    /tmp/plasmaQx1 (deleted)",  # /dev/shm too small
            "7f0610000000-7f0610001000 rw-s 00000000 08:01 98    /tmp/notplasma",
        ]
    )
    assert store_mappings(maps) == [(0x7F037D1A0000, 0x7F0540000000), (0x7F0600000000, 0x7F0610000000)]


def _rss_shmem() -> int:
    return _field(os.getpid(), "RssShmem")


def test_releasing_store_pages_drops_them_from_the_rss_and_keeps_their_contents():
    """A stand-in for Ray's store: a shared file mapping under /dev/shm/plasma..., as Ray maps it, in a
    process that has loaded Ray (as every process of a simulation has; others skip the work)."""
    import ray  # noqa: F401

    if not Path("/dev/shm").is_dir():
        pytest.fail("this test needs /dev/shm (Linux)")
    path = Path(f"/dev/shm/{STORE_PREFIX}-fedloom-test-{os.getpid()}")
    size = 64 * MIB
    with path.open("w+b") as f:
        f.truncate(size)
        store = mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED)
    try:
        pattern = np.frombuffer(os.urandom(MIB), dtype=np.uint8)
        view = np.frombuffer(store, dtype=np.uint8)
        view[:] = np.tile(pattern, size // MIB)  # written: every page is resident in this process
        before = _rss_shmem()
        assert before >= size
        assert release_store_pages() >= size
        assert _rss_shmem() <= before - size + MIB  # its pages left this process's RSS ...
        np.testing.assert_array_equal(view[-MIB:], pattern)  # ... and are still the store's, unchanged
        del view
    finally:
        store.close()
        path.unlink()
