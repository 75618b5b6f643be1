"""How client commands find a running devnet: `<data-dir>/devnet.json`.

The devnet writes the file once everything answers and removes it when it stops; a file
whose process is gone (a killed devnet) is treated as absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILE_NAME = "devnet.json"


class DevnetNotFound(RuntimeError):
    """No running devnet could be found from the data directory."""


@dataclass(frozen=True)
class Endpoints:
    pid: int
    kafka: str
    embedded: bool
    rpc: str
    ws: str
    chain_id: int
    #: Prometheus endpoints of the devnet's processes, by process name.
    metrics: dict[str, str] = field(default_factory=dict)

    def write(self, data_dir: Path) -> None:
        path = data_dir / FILE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, data_dir: Path) -> Endpoints:
        path = data_dir / FILE_NAME
        hint = (
            f"no devnet is running with data directory {data_dir} "
            "(start one with `lattice devnet`, or pass --kafka/--rpc)"
        )
        try:
            found = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise DevnetNotFound(hint) from None
        except (ValueError, TypeError) as exc:
            raise DevnetNotFound(f"{path} is unreadable ({exc}); {hint}") from None
        if not _alive(found.pid):
            raise DevnetNotFound(
                f"the devnet that wrote {path} (pid {found.pid}) has exited; {hint}"
            )
        return found


def remove(data_dir: Path) -> None:
    (data_dir / FILE_NAME).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
