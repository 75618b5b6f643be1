from __future__ import annotations

from pathlib import Path

from processors.state import ProcessorState


def test_state_and_offsets_commit_together_and_survive_reopening(tmp_path: Path) -> None:
    state = ProcessorState(tmp_path)
    assert state.offset("t", 0) is None
    state.commit({("t", 0): 41}, {b"block/1": b"x"}, {b"emitted": 7})
    state.commit({("t", 0): 42, ("t", 1): 3}, {b"block/2": b"y"})
    state.close()
    again = ProcessorState(tmp_path)
    assert (again.offset("t", 0), again.offset("t", 1)) == (42, 3)
    assert again.get_int(b"emitted") == 7 and again.get_int(b"missing", 5) == 5
    assert list(again.scan(b"block/")) == [(b"block/1", b"x"), (b"block/2", b"y")]
    assert again.get(b"nope") is None
    again.close()
