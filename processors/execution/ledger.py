"""The state transition: one final DAG chain block becomes one EVM block (pure core).

The EVM block's number is its position on the selected chain, its parent the previous EVM
block, its timestamp the chain block's (in seconds, never below the parent's), its
coinbase the chain block's proposer. py-evm's latest fork (Prague) executes the ordered
transactions in consensus order; fees follow EIP-1559: the base fee is burnt and priority
fees go to the chain block's proposer.

A transaction is skipped, deterministically and with a recorded reason, when it was already
executed (the same hash appeared earlier in the order: mergesets of parallel blocks often
carry the same transaction), when it can never be valid, or when the state rejects it (nonce,
balance, fee below the base fee). Skipped transactions become `lattice.tx.rejected` events.

A block is full once the next transaction's gas limit exceeds the gas it has left (a chain
block's mergeset can carry far more than one EVM block holds). That transaction and every
one after it are carried over, in order, ahead of the next chain block's transactions: the
carried list is part of the ledger's state, kept with the block that left it (keyed by its
hash), so a replay, a restart or a reorganisation carries exactly the same ones.

The head may go back (`rewind`): the optimistic head executes the virtual selected chain
as it grows, and a chain that changes under it drops the blocks above the fork. Everything
a block decides from earlier ones is read through the canonical chain (py-evm's
transaction lookups for "already executed", the head's carried list), so the blocks
executed after a rewind are exactly those of a ledger that never saw the dropped ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import rlp
from eth.abc import AtomicDatabaseAPI, BlockAPI, BlockHeaderAPI, ComputationAPI, ReceiptAPI
from eth.chains.base import MiningChain
from eth.db.atomic import AtomicDB
from eth.db.schema import SchemaV1
from eth.rlp.sedes import chain_gaps
from eth_hash.auto import keccak
from eth_typing import Address
from eth_utils import ValidationError  # type: ignore[attr-defined]

from processors.execution.genesis import Genesis
from processors.execution.receipts import BlockReceipt, ReceiptSource, block_receipts
from processors.execution.transactions import (
    ChainRules,
    InvalidTransaction,
    Transaction,
    decode_transaction,
)
from processors.execution.trie import ordered_trie
from processors.execution.vm import VM_CONFIGURATION
from schemas.events import BlockOrdered

#: + block hash: RLP [[raw, dag block], ...], what that block had no room for.
_CARRIED = b"lattice/carried/"
#: Where a store from before kept the head's carried list (one list, no block hash).
_LEGACY_CARRIED = b"lattice/carried"


@dataclass(frozen=True)
class Rejection:
    hash: bytes
    sender: bytes
    nonce: int
    dag_block: bytes
    code: str
    reason: str


@dataclass(frozen=True)
class Included:
    tx: Transaction
    index: int
    receipt: ReceiptAPI


@dataclass(frozen=True)
class Account:
    """An account at the head, as `lattice.state.accounts` tells it."""

    address: bytes
    balance: int
    nonce: int
    code_hash: bytes
    storage_root: bytes


@dataclass(frozen=True)
class BlockResult:
    header: BlockHeaderAPI
    dag_block: bytes
    included: tuple[Included, ...]
    receipts: tuple[BlockReceipt, ...]
    rejected: tuple[Rejection, ...]
    touched: tuple[bytes, ...] = field(default=())
    #: Transactions waiting for the next block (this one was full), oldest first.
    carried: int = 0


_NONCE = re.compile(r"expected (\d+), but got (\d+)", re.IGNORECASE)


def rejection_code(message: str) -> str:
    """The code of a transaction the state refuses, from py-evm's message."""
    text = message.lower()
    nonce = _NONCE.search(message)
    if "nonce" in text and nonce:
        return "nonce_too_low" if int(nonce[2]) < int(nonce[1]) else "nonce_too_high"
    for needle, code in (
        ("nonce", "nonce_mismatch"),
        ("balance", "insufficient_funds"),
        ("exceeds gas limit", "block_gas_exhausted"),
        ("gas limit", "block_gas_exhausted"),
        ("base fee", "fee_below_base_fee"),
        ("max fee", "fee_below_base_fee"),
    ):
        if needle in text:
            return code
    return "invalid"


def _seal(vm: Any, header: BlockHeaderAPI, txs: list[Any], receipts: list[ReceiptAPI]) -> BlockAPI:
    """py-evm's `set_block_transactions_and_withdrawals` then `mine_block`, with the
    one-pass ordered tries (`processors.execution.trie`, identical nodes, ~9x faster) and
    without `validate_block`, which would rebuild the transaction trie the slow way to check
    a block built right here from py-evm's own header."""
    tx_root, tx_nodes = ordered_trie([tx.encode() for tx in txs])
    receipt_root, receipt_nodes = ordered_trie([receipt.encode() for receipt in receipts])
    vm.chaindb.persist_trie_data_dict(tx_nodes)
    vm.chaindb.persist_trie_data_dict(receipt_nodes)
    sealed = header.copy(transaction_root=tx_root, receipt_root=receipt_root)
    # Packing and finalising copy the block twice, deep-copying every transaction, without
    # reading them (~10% of a block's time): the transactions join once the header is final.
    packed = vm.pack_block(vm.get_block().copy(header=sealed))
    return vm.finalize_block(packed).block.copy(transactions=txs)  # type: ignore[no-any-return]


@dataclass
class _Building:
    """An EVM block being built from ordered transactions."""

    vm: Any
    header: BlockHeaderAPI
    touched: set[bytes]
    builder: Any = None
    applied: list[Any] = field(default_factory=list)
    receipts: list[ReceiptAPI] = field(default_factory=list)
    included: list[Included] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    #: What the block had no room for, in order: it waits for the next one.
    carry: list[tuple[bytes, bytes]] = field(default_factory=list)


def _refused(tx: Transaction, dag_block: bytes, code: str, reason: str) -> Rejection:
    return Rejection(tx.hash, tx.sender, tx.nonce, dag_block, code, reason)


def _touched(computation: ComputationAPI, out: set[bytes]) -> None:
    msg = computation.msg
    out.update(a for a in (msg.sender, msg.storage_address, msg.to) if a)
    for child in computation.children:
        _touched(child, out)


class Ledger:
    """The chain of EVM blocks over a database; `execute` applies one ordered chain block.
    Without a genesis the database must hold a chain already (a reader's scratch copy)."""

    def __init__(self, db: AtomicDatabaseAPI, genesis: Genesis | None, rules: ChainRules) -> None:
        self.rules = rules
        self.db = db
        chain_class = MiningChain.configure(
            __name__="LatticeChain", vm_configuration=VM_CONFIGURATION, chain_id=rules.chain_id
        )
        try:
            self.chain: MiningChain = chain_class(db)
        except Exception:  # no canonical head yet: a fresh store
            if genesis is None:
                raise
            params = {
                "difficulty": 0,
                "gas_limit": genesis.gas_limit,
                "timestamp": genesis.timestamp,
                "coinbase": b"\0" * 20,
                "extra_data": b"lattice",
                "nonce": b"\0" * 8,
                "mix_hash": b"\0" * 32,
            }
            chain: Any = chain_class.from_genesis(db, params, genesis.state())  # type: ignore[arg-type]
            self.chain = chain
        if db.exists(_LEGACY_CARRIED):  # a store from before: the list is its head's
            db[_CARRIED + self.head.hash] = db[_LEGACY_CARRIED]
            del db[_LEGACY_CARRIED]

    @property
    def head(self) -> BlockHeaderAPI:
        return self.chain.get_canonical_head()

    def execute(self, ordered: BlockOrdered) -> BlockResult:
        parent = self.head
        # The chain block's clock, never behind the parent's. Several blocks may share a
        # second (as on Arbitrum): forcing each one a second above its parent, as Ethereum's
        # 12 s slots allow, runs a devnet with 0.25 s blocks (five chain blocks a second)
        # four seconds ahead for every second it runs, and contracts' deadlines with it.
        timestamp = max(parent.timestamp, ordered.timestamp_ms // 1000)
        chain = self.chain
        header = chain.create_header_from_parent(
            parent, timestamp=timestamp, coinbase=ordered.proposer
        )
        # Straight through the VM, as py-evm's apply_all_transactions does, but skipping
        # what the state rejects (MiningChain.apply_transaction rebuilds the block per
        # transaction: quadratic).
        vm = chain.get_vm(header)
        block = _Building(vm, header, {ordered.proposer}, vm.get_transaction_builder())
        for raw, dag_block in self.carried() + [(e.raw, e.dag_block) for e in ordered.transactions]:
            if block.carry:  # the block is full: everything after waits, in order
                block.carry.append((raw, dag_block))
            else:
                self._take(block, raw, dag_block)
        sealed = _seal(block.vm, block.header, block.applied, block.receipts)
        # The chain database directly: Chain.persist_block re-validates the block it was
        # just given and reads every new canonical block back with all its transactions,
        # only to return them (~10% of execution time).
        chain.chaindb.persist_block(sealed)
        chain.header = chain.create_header_from_parent(sealed.header)
        carried = _CARRIED + sealed.hash
        if block.carry:
            self.db[carried] = rlp.encode([[raw, dag] for raw, dag in block.carry])
        elif self.db.exists(carried):
            # The same EVM block built before, from another chain block whose mergeset
            # ran over (a reorganisation dropped it): this one leaves nothing waiting.
            del self.db[carried]
        h = sealed.header
        facts = block_receipts(
            h.block_number,
            h.hash,
            h.base_fee_per_gas or 0,
            [_source(i.tx) for i in block.included],
            [i.receipt for i in block.included],
        )
        return BlockResult(
            h,
            ordered.hash,
            tuple(block.included),
            facts,
            tuple(block.rejected),
            tuple(sorted(block.touched)),
            len(block.carry),
        )

    def _take(self, block: _Building, raw: bytes, dag_block: bytes) -> None:
        """Apply one ordered transaction to the block being built, or say why not."""
        tx_hash = keccak(raw)
        try:
            tx = decode_transaction(raw, self.rules)
        except InvalidTransaction as exc:
            block.rejected.append(Rejection(tx_hash, b"", 0, dag_block, exc.code, exc.message))
            return
        if tx_hash in block.seen or self.db.exists(_lookup(tx_hash)):
            block.rejected.append(_refused(tx, dag_block, "already_executed", "executed earlier"))
            return
        header = block.header
        if header.gas_used + tx.gas_limit > header.gas_limit:
            if header.gas_used == 0:  # no block could hold it: refuse, do not wait forever
                limits = f"gas limit {tx.gas_limit} above the block's {header.gas_limit}"
                block.rejected.append(_refused(tx, dag_block, "block_gas_exhausted", limits))
            else:
                block.carry.append((raw, dag_block))
            return
        try:
            evm_tx = block.builder.decode(raw)
            # decode_transaction recovered the sender already (coincurve, from the same
            # bytes): seed py-evm's cached property instead of recovering it twice
            # (~10% of execution time).
            evm_tx.__dict__["sender"] = tx.sender
            receipt, computation = block.vm.apply_transaction(header, evm_tx)
        except ValidationError as exc:
            # Raised by validation, before the state changed.
            reason = str(exc)
            block.rejected.append(_refused(tx, dag_block, rejection_code(reason), reason))
            return
        block.header = block.vm.add_receipt_to_header(header, receipt)
        block.applied.append(evm_tx)
        block.receipts.append(receipt)
        block.seen.add(tx_hash)
        _touched(computation, block.touched)
        block.touched.add(tx.sender)
        block.included.append(Included(tx, len(block.included), receipt))

    def carried(self) -> list[tuple[bytes, bytes]]:
        """(raw transaction, DAG block) the head block had no room for, oldest first."""
        key = _CARRIED + self.head.hash
        if not self.db.exists(key):
            return []
        return [(bytes(raw), bytes(dag)) for raw, dag in rlp.decode(self.db[key])]

    def rewind(self, number: int) -> None:
        """Make block `number` of the canonical chain the head again: the blocks above it
        stop being canonical (their numbers and transaction lookups go) and the next
        `execute` builds on it. Their headers, bodies and receipts stay, found by hash."""
        head = self.head.block_number
        if not 0 <= number <= head:
            raise ValueError(f"cannot rewind to block {number}: the head is {head}")
        chaindb = self.chain.chaindb
        for dropped in range(number + 1, head + 1):
            header = chaindb.get_canonical_block_header_by_number(dropped)  # type: ignore[arg-type]
            for tx_hash in chaindb.get_block_transaction_hashes(header):
                self.db.delete(_lookup(tx_hash))
            self.db.delete(SchemaV1.make_block_number_to_hash_lookup_key(dropped))  # type: ignore[arg-type]
        target = chaindb.get_canonical_block_header_by_number(number)  # type: ignore[arg-type]
        self.db[SchemaV1.make_canonical_head_hash_lookup_key()] = target.hash
        # py-evm's record of which numbers it holds: none missing, the next one is new.
        gaps = rlp.encode(((), number + 1), sedes=chain_gaps)
        self.db[SchemaV1.make_header_chain_gaps_lookup_key()] = gaps
        self.db[SchemaV1.make_chain_gaps_lookup_key()] = gaps
        self.chain.header = self.chain.create_header_from_parent(target)

    def account(self, address: bytes) -> Account:
        """An account at the head."""
        state = self.chain.get_vm().state
        account = Address(address)
        return Account(
            address=address,
            balance=state.get_balance(account),
            nonce=state.get_nonce(account),
            code_hash=state.get_code_hash(account),
            storage_root=_storage_root(state, address),
        )


def _lookup(tx_hash: bytes) -> bytes:
    """py-evm's key for a canonical transaction's place: present once, and only while,
    a canonical block holds it."""
    return SchemaV1.make_transaction_hash_to_block_lookup_key(tx_hash)  # type: ignore[arg-type]


def _source(tx: Transaction) -> ReceiptSource:
    return ReceiptSource(tx.hash, tx.sender, tx.to, tx.nonce, tx.tx_type, tx.fee_cap, tx.tip_cap)


def _storage_root(state: Any, address: bytes) -> bytes:
    # py-evm keeps the storage root on the account record; there is no public getter.
    return bytes(state._account_db._get_storage_root(address))


def genesis_block(genesis: Genesis, rules: ChainRules) -> BlockHeaderAPI:
    """The genesis header this configuration gives (built in memory): two nodes serve the
    same ledger only if theirs agree."""
    return Ledger(AtomicDB(), genesis, rules).head
