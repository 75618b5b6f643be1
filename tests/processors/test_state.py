"""The state stores: what a commit writes is all there after reopening, or none of it."""

from __future__ import annotations

from pathlib import Path

from processors.abc import Outgoing
from processors.state import MemoryStore, RocksStore, decode_outgoing, encode_outgoing
from streams.kafka import Delivered


def test_state_and_offsets_commit_together_and_survive_reopening(tmp_path: Path) -> None:
    state = RocksStore(tmp_path)
    assert state.offset("t", 0) is None
    state.put(b"block/1", b"x")
    state.put_int(b"emitted", 7)
    state.commit({("t", 0): 41})
    state.put(b"block/2", b"y")
    state.commit({("t", 0): 42, ("t", 1): 3})
    identity = state.identity()
    state.close()
    again = RocksStore(tmp_path)
    assert (again.offset("t", 0), again.offset("t", 1)) == (42, 3)
    assert again.positions() == {("t", 0): 42, ("t", 1): 3}
    assert again.get_int(b"emitted") == 7 and again.get_int(b"missing", 5) == 5
    assert list(again.scan(b"block/")) == [(b"block/1", b"x"), (b"block/2", b"y")]
    assert again.get(b"nope") is None
    assert again.identity() == identity  # a store keeps its name across restarts
    again.close()


def test_writes_wait_for_the_commit_and_reads_see_them_first(tmp_path: Path) -> None:
    state = RocksStore(tmp_path)
    state.put(b"k/1", b"a")
    state.put(b"k/3", b"c")
    state.commit({})
    state.put(b"k/2", b"b")
    state.delete(b"k/3")
    assert state.get(b"k/2") == b"b" and state.get(b"k/3") is None
    assert list(state.scan(b"k/")) == [(b"k/1", b"a"), (b"k/2", b"b")]
    state.close()  # never committed: gone, as after a crash
    again = RocksStore(tmp_path)
    assert list(again.scan(b"k/")) == [(b"k/1", b"a"), (b"k/3", b"c")]
    again.close()


def test_outbox_entries_are_kept_until_acknowledged(tmp_path: Path) -> None:
    entries = [
        Outgoing(0, "out", 1, "key", b"value", 1_700_000_000_000, ("in", 0, 9, 0)),
        Outgoing(1, "out", 0, None, b"", None, None),
    ]
    for entry in entries:
        assert decode_outgoing(entry.sequence, encode_outgoing(entry)) == entry
    state = RocksStore(tmp_path)
    state.commit({("in", 0): 9}, entries)
    assert state.outbox() == entries and state.next_sequence() == 2
    state.commit({}, (), {0: Delivered("out", 1, 77)})
    assert state.outbox() == entries[1:]
    assert state.delivered() == {("out", 1): 77}
    state.close()


def test_the_memory_store_keeps_the_same_contract() -> None:
    store = MemoryStore()
    store.put(b"b", b"2")
    store.put(b"a", b"1")
    store.put(b"c", b"3")
    store.delete(b"c")
    assert list(store.scan(b"")) == [(b"a", b"1"), (b"b", b"2")]
    entry = Outgoing(0, "out", 0, "k", b"v", None, None)
    store.commit({("in", 0): 4}, [entry])
    assert store.positions() == {("in", 0): 4} and store.outbox() == [entry]
    store.commit({}, (), {0: Delivered("out", 0, 1)})
    assert store.outbox() == [] and store.next_sequence() == 1
