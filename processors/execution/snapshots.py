"""State snapshots of an execution replica, for nodes that join without replaying the log.

Every `snapshot_every` blocks the execution processor copies what its store has committed
(a RocksDB checkpoint: hard links, cheap) to `<state-dir>/snapshots/<block>`; the two newest
are kept, so a download of the newer one is never cut short by the next. A copy is
consistent: its input offsets and its state are one committed batch. The gateway serves
the newest as a tar stream (`GET /v1/snapshot`); `lattice node --snapshot URL` fetches one,
checks it (`processors.execution.statecheck`, then the quorum's checkpoints) and starts its
replica from it, reading the log on from the copied offsets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from processors.state import RocksStore

SNAPSHOTS = "snapshots"
KEEP = 2
#: Written last into a finished copy: a copy without it is half-made and never served.
DONE = "DONE"


def take(store: RocksStore, block: int) -> Path:
    """Copy the store's committed state to `<store>/snapshots/<block>`; drop older copies."""
    root = store.path / SNAPSHOTS
    root.mkdir(exist_ok=True)
    target = root / f"{block:012d}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    store.copy_to(target / "rocksdb")
    (target / DONE).write_text(f"{block}\n")
    for old in finished(store.path)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for half in root.iterdir():
        if half.is_dir() and not (half / DONE).exists() and half != target:
            shutil.rmtree(half, ignore_errors=True)
    return target


def finished(store_dir: Path) -> list[Path]:
    """The finished copies, newest first."""
    root = store_dir / SNAPSHOTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / DONE).exists()), reverse=True)


def pack(snapshot: Path, out: IO[bytes]) -> None:
    """Write a copy as an uncompressed tar (RocksDB's files compress little)."""
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for path in sorted((snapshot / "rocksdb").iterdir()):
            tar.add(path, arcname=f"rocksdb/{path.name}", recursive=False)


def unpack(stream: IO[bytes], into: Path) -> None:
    """Extract a tar written by `pack` into `into` (plain files under `rocksdb/` only)."""
    into.mkdir(parents=True)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = Path(member.name)
            if not member.isfile() or name.parent != Path("rocksdb") or name.name in ("", ".."):
                raise ValueError(f"a snapshot holds only RocksDB files, not {member.name!r}")
            tar.extract(member, into, filter="data")


def chunks(snapshot: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """`pack`'s output in pieces, for a streamed HTTP answer."""
    read, write = os.pipe()

    def writer() -> None:
        # The reader may leave first (a client that hung up): that ends the copy.
        with contextlib.suppress(BrokenPipeError), os.fdopen(write, "wb") as out:
            pack(snapshot, out)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with os.fdopen(read, "rb") as source:
        while piece := source.read(size):
            yield piece
    thread.join()
