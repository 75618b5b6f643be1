"""Joining from a state snapshot: a node that has no state takes another node's, checked.

Three checks stand between a downloaded snapshot and a node that serves it:

1. **Same network.** The snapshot's block 0 is this network's genesis block.
2. **The state is the one its head names.** Every trie node and code blob under the head's
   state root hashes to its key, and nothing reachable is missing
   (`processors.execution.statecheck`).
3. **The head is the network's.** The node starts its replica from the snapshot's offsets
   and waits until it has executed a checkpointed height at or above the snapshot's head
   that a quorum of the network's *other* signers agree on; its block hash and state root
   there must be theirs. The hash chain makes that vouch for the snapshot's head and
   everything before it.

Until the third check passes the node does not serve. `snapshot.json` in the state directory
records that a snapshot was adopted and whether it is confirmed, so a node stopped before
confirming checks again at its next start rather than serving what was never confirmed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.chainview import ChainView, LedgerNotReady
from gateway.checkpointview import CheckpointView
from processors.execution import snapshots
from processors.execution.db import overlay_chain_db
from processors.execution.ledger import Ledger
from processors.execution.processor import EVM_PREFIX
from processors.execution.statecheck import StateMismatch, check_state
from processors.state import RocksStore
from schemas.events import NetworkGenesis
from streams.settings import Settings

MARKER = "snapshot.json"


class SnapshotError(RuntimeError):
    """A snapshot that cannot be used, and why."""


@dataclass(frozen=True)
class Adopted:
    block: int
    block_hash: bytes
    state_root: bytes
    source: str


def pending(state_dir: Path) -> Adopted | None:
    """The adopted snapshot not confirmed yet, if any."""
    path = state_dir / MARKER
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data["confirmed"]:
        return None
    hashes = bytes.fromhex(data["hash"]), bytes.fromhex(data["root"])
    return Adopted(data["block"], *hashes, data["source"])


def _mark(state_dir: Path, adopted: Adopted, confirmed: bool) -> None:
    record = {
        "block": adopted.block,
        "hash": adopted.block_hash.hex(),
        "root": adopted.state_root.hex(),
        "source": adopted.source,
        "confirmed": confirmed,
    }
    tmp = state_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, state_dir / MARKER)


def download(url: str, into: Path, say: Callable[[str], None]) -> None:
    """`GET <url>/v1/snapshot` into `into` (a new directory), with progress."""
    part = into.with_name(into.name + ".tar")
    got = 0
    last = time.monotonic()
    try:
        with httpx.stream("GET", f"{url.rstrip('/')}/v1/snapshot", timeout=30) as answer:
            if answer.status_code != 200:
                answer.read()
                raise SnapshotError(f"{url} gave no snapshot: {answer.status_code} {answer.text}")
            with open(part, "wb") as out:
                for piece in answer.iter_bytes(1 << 20):
                    out.write(piece)
                    got += len(piece)
                    if time.monotonic() - last > 2:
                        say(f"downloading: {got / 2**20:.1f} MiB")
                        last = time.monotonic()
        say(f"downloaded {got / 2**20:.1f} MiB from {url}")
        with open(part, "rb") as stream:
            snapshots.unpack(stream, into)
    except httpx.HTTPError as exc:
        raise SnapshotError(f"could not download a snapshot from {url}: {exc}") from None
    except (ValueError, OSError) as exc:
        raise SnapshotError(f"the snapshot from {url} is not one: {exc}") from None
    finally:
        part.unlink(missing_ok=True)


def adopt(
    settings: Settings,
    state_dir: Path,
    network: NetworkGenesis,
    say: Callable[[str], None],
) -> Adopted:
    """Download, check (same genesis, whole state under the head's root) and install a
    snapshot as this node's execution state. Nothing is installed unless both pass."""
    source = str(settings.snapshot)
    joining = state_dir.with_name(state_dir.name + ".joining")
    shutil.rmtree(joining, ignore_errors=True)
    try:
        adopted = _check(settings, joining, network, source, say)
    except BaseException:
        shutil.rmtree(joining, ignore_errors=True)
        raise
    _mark(joining, adopted, False)
    os.replace(joining, state_dir)
    return adopted


def _check(
    settings: Settings,
    joining: Path,
    network: NetworkGenesis,
    source: str,
    say: Callable[[str], None],
) -> Adopted:
    from deploy.network import load_genesis, rules_of

    download(source, joining, say)
    store = RocksStore(joining)
    try:
        db, overlay = overlay_chain_db(lambda key: store.get(EVM_PREFIX + key))
        try:
            ledger = Ledger(db, load_genesis(settings), rules_of(settings))
        except Exception as exc:
            raise SnapshotError(f"the snapshot holds no ledger this node can read: {exc}") from None
        genesis = ledger.chain.get_canonical_block_header_by_number(0)  # type: ignore[arg-type]
        if overlay.take_changes() or genesis.hash != network.genesis_hash:
            raise SnapshotError(
                f"the snapshot from {source} is of another ledger (its genesis block is "
                f"0x{genesis.hash.hex()}, the network's 0x{network.genesis_hash.hex()})"
            )
        head = ledger.head
        say(f"checking the state at block {head.block_number} (root 0x{head.state_root.hex()})")
        try:
            check = check_state(lambda key: store.get(EVM_PREFIX + key), head.state_root)
        except StateMismatch as exc:
            raise SnapshotError(f"the snapshot's state at its head is not sound: {exc}") from None
        say(
            f"state sound: {check.accounts} accounts, {check.storage_slots} storage slots, "
            f"{check.nodes} trie nodes, {check.code_bytes} bytes of code"
        )
        adopted = Adopted(head.block_number, bytes(head.hash), bytes(head.state_root), source)
        store.adopt()
    finally:
        store.close()
    return adopted


def confirm(
    adopted: Adopted,
    state_dir: Path,
    view: ChainView,
    checkpoints: CheckpointView,
    own: bytes,
    say: Callable[[str], None],
    stopping: Callable[[], bool],
    timeout_s: float = 600.0,
) -> int:
    """Wait for the network's word on the adopted snapshot; the height it was checked at.
    Raises SnapshotError when a quorum of other nodes signed something else."""
    deadline = time.monotonic() + timeout_s
    said = 0.0
    while time.monotonic() < deadline and not stopping():
        view.refresh()
        try:
            view.head()
            # Final blocks only: above them the head is optimistic, and a block there may
            # still be replaced by the DAG's reorganisation without anything being wrong.
            head = view.final_number()
        except LedgerNotReady:
            head = -1
        for height, (block_hash, state_root) in checkpoints.agreed_from(adopted.block, own):
            if height > head:
                break
            local = view.header(height)
            if (bytes(local.hash), bytes(local.state_root)) != (block_hash, state_root):
                raise SnapshotError(
                    f"the snapshot does not lead to the network's ledger: at height {height} "
                    f"a quorum signed block 0x{block_hash.hex()} state root "
                    f"0x{state_root.hex()}, the snapshot gives block 0x{local.hash.hex()} "
                    f"state root 0x{local.state_root.hex()}; remove {state_dir} and join "
                    "again from another node"
                )
            _mark(state_dir, adopted, True)
            return height
        if time.monotonic() - said > 5:
            say(
                f"waiting for a checkpoint at or above block {adopted.block} signed by a "
                f"quorum of the other nodes (executed to {head})"
            )
            said = time.monotonic()
        time.sleep(0.2)
    raise SnapshotError(
        f"no quorum of other nodes signed a checkpoint at or above block {adopted.block} "
        f"within {timeout_s:.0f}s: is --signers the network's list?"
    )
