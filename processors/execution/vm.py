"""The EVM Lattice runs: py-evm's latest fork (Prague) with a fixed block gas limit.

py-evm's default header rule lets every block's gas limit drift by 1/1024 of its parent's:
down, unless the parent was more than half full, towards a constant of its own
(`GENESIS_GAS_LIMIT`). A ledger that makes a block every fraction of a second mostly makes
empty ones, so its capacity decays geometrically: a devnet with 0.25 s blocks held 30M gas
at genesis and 0.6M (thirty transfers) a quarter of an hour later. Lattice keeps the
genesis gas limit for every block instead, as anvil and Hardhat do with theirs (it is within
EIP-1559's bound of parent +- parent/1024 by construction). Everything that builds a header,
the execution ledger and the gateway's pending header for calls alike, goes through this VM.
"""

from __future__ import annotations

from typing import Any

from eth.abc import BlockHeaderAPI
from eth.vm.forks import PragueVM  # type: ignore[attr-defined]


class LatticeVM(PragueVM):
    fork = "prague"

    @classmethod
    def create_header_from_parent(  # type: ignore[override]
        cls, parent_header: BlockHeaderAPI | None, **header_params: Any
    ) -> BlockHeaderAPI:
        if parent_header is not None:
            header_params.setdefault("gas_limit", parent_header.gas_limit)
        return PragueVM.create_header_from_parent(parent_header, **header_params)  # type: ignore[no-any-return]


#: py-evm's `vm_configuration` for every Lattice chain object.
VM_CONFIGURATION = ((0, LatticeVM),)
