"""A copied state is checked node by node against the root that names it (pure core)."""

from __future__ import annotations

import pytest
import rlp

from processors.execution.genesis import JOB_MARKET
from processors.execution.statecheck import EMPTY_CODE, StateMismatch, check_state
from tests.processors.execution.test_ledger import Store, ordered, transfer


def test_the_whole_state_under_a_root_is_walked() -> None:
    store = Store()
    ledger, overlay = store.ledger()
    root = ledger.head.state_root
    check = check_state(store.data.get, root)
    assert check.accounts >= 10 and check.nodes > check.accounts // 16
    assert check.code_bytes > 0 and check.storage_slots > 0  # the genesis contracts'
    account = ledger.account(JOB_MARKET)
    assert account.code_hash != EMPTY_CODE
    # Another root of the same store: the one after a block.
    ledger.execute(ordered(1, [transfer(0)]))
    store.commit(overlay)
    later = check_state(store.data.get, ledger.head.state_root)
    assert later.accounts == check.accounts + 2  # the recipient and the block's proposer


def test_an_altered_missing_or_foreign_node_is_named() -> None:
    store = Store()
    ledger, _ = store.ledger()
    root = ledger.head.state_root
    code_hash = ledger.account(JOB_MARKET).code_hash

    altered = dict(store.data)
    node = rlp.decode(altered[root])
    node[16] = b"\x01"  # a value in the root branch: the bytes no longer hash to the key
    altered[root] = rlp.encode(node)
    with pytest.raises(StateMismatch, match="hashes otherwise"):
        check_state(altered.get, root)

    missing = dict(store.data)
    del missing[code_hash]
    with pytest.raises(StateMismatch, match=f"code 0x{code_hash.hex()} is missing"):
        check_state(missing.get, root)

    foreign = dict(store.data)
    foreign[code_hash] = b"\x60\x00"
    with pytest.raises(StateMismatch, match="hashes otherwise"):
        check_state(foreign.get, root)

    with pytest.raises(StateMismatch, match="is missing"):
        check_state(store.data.get, b"\x42" * 32)  # a root this store never had
