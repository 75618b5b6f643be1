"""The analytics database: tables fed by the sink, and the views analysts query.

Column names follow the public blockchain-ETL datasets where they apply (`transactions`:
`hash`, `nonce`, `block_number`, `from_address`, `value`, `gas`, `gas_price`, `receipt_status`,
`receipt_gas_used`, ...). Addresses and hashes are lower-case 0x-hex text, wei amounts
UHUGEINT (unsigned 128-bit: 3.4e38 wei, far above all the ether there is), times TIMESTAMP
(UTC). Every table fed from a topic ends with the source position of its row
(`src_partition`, `src_offset`).

Tables hold what each topic says; joins give the rest: `transactions` is the signed
transaction as the DAG ordered it (`ordered_transactions`) joined with its receipt and block,
materialised block by block; the view `dag_blocks` is a proposed block joined with its
GHOSTDAG colouring (`dag_order`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type), source position excluded
    key: tuple[str, ...]
    #: A later record replaces the row (latest state, from compacted topics).
    replace: bool = False

    @property
    def typed(self) -> list[tuple[str, str]]:
        """Every column with its type, the source position included."""
        return [*self.columns, ("src_partition", "INTEGER"), ("src_offset", "UBIGINT")]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.typed]

    def create(self) -> str:
        cols = [f"{c} {t}" for c, t in self.columns]
        cols += ["src_partition INTEGER NOT NULL", "src_offset UBIGINT NOT NULL"]
        cols.append(f"PRIMARY KEY ({', '.join(self.key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)})"


def _table(name: str, key: str, spec: str, replace: bool = False) -> Table:
    columns = tuple(
        (line.split(None, 1)[0], line.split(None, 1)[1])
        for line in (raw.strip() for raw in spec.strip().splitlines())
        if line
    )
    return Table(name, columns, tuple(k.strip() for k in key.split(",")), replace)


HASH = "VARCHAR NOT NULL"
WEI = "UHUGEINT NOT NULL"

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _table(
            "blocks",
            "number",
            f"""
            number UBIGINT NOT NULL
            hash {HASH}
            parent_hash {HASH}
            dag_block {HASH}
            state_root {HASH}
            receipts_root {HASH}
            transactions_root {HASH}
            gas_used UBIGINT NOT NULL
            gas_limit UBIGINT NOT NULL
            base_fee_per_gas {WEI}
            timestamp TIMESTAMP NOT NULL
            miner {HASH}
            transaction_count UINTEGER NOT NULL
            rejected_count UINTEGER NOT NULL
            """,
        ),
        _table(
            "proposed_blocks",
            "hash",
            f"""
            hash {HASH}
            parents VARCHAR[] NOT NULL
            proposer {HASH}
            timestamp TIMESTAMP NOT NULL
            sequence UBIGINT NOT NULL
            transaction_count UINTEGER NOT NULL
            """,
        ),
        _table(
            "dag_order",
            "hash",
            f"""
            hash {HASH}
            chain_block {HASH}
            chain_index UBIGINT NOT NULL
            is_chain_block BOOLEAN NOT NULL
            colour VARCHAR NOT NULL
            selected_parent VARCHAR
            blue_score UBIGINT
            blue_work UHUGEINT
            """,
        ),
        _table(
            "ordered_transactions",
            "hash",
            f"""
            hash {HASH}
            nonce UBIGINT NOT NULL
            from_address {HASH}
            to_address VARCHAR
            value {WEI}
            gas UBIGINT NOT NULL
            gas_price UHUGEINT
            max_fee_per_gas UHUGEINT
            max_priority_fee_per_gas UHUGEINT
            input VARCHAR NOT NULL
            transaction_type UTINYINT NOT NULL
            dag_block {HASH}
            chain_index UBIGINT NOT NULL
            """,
        ),
        _table(
            "receipts",
            "transaction_hash",
            f"""
            transaction_hash {HASH}
            transaction_index UINTEGER NOT NULL
            block_number UBIGINT NOT NULL
            block_hash {HASH}
            from_address {HASH}
            to_address VARCHAR
            contract_address VARCHAR
            status UTINYINT NOT NULL
            gas_used UBIGINT NOT NULL
            cumulative_gas_used UBIGINT NOT NULL
            effective_gas_price {WEI}
            log_count UINTEGER NOT NULL
            """,
        ),
        _table(
            "logs",
            "transaction_hash, log_index",
            f"""
            transaction_hash {HASH}
            log_index UINTEGER NOT NULL
            block_number UBIGINT NOT NULL
            address {HASH}
            topic0 VARCHAR
            topic1 VARCHAR
            topic2 VARCHAR
            topic3 VARCHAR
            data VARCHAR NOT NULL
            """,
        ),
        _table(
            "rejected_transactions",
            "hash, block_number",
            f"""
            hash {HASH}
            from_address {HASH}
            nonce UBIGINT NOT NULL
            block_number UBIGINT NOT NULL
            dag_block {HASH}
            code VARCHAR NOT NULL
            reason VARCHAR NOT NULL
            """,
        ),
        _table(
            "accounts",
            "address",
            f"""
            address {HASH}
            balance {WEI}
            nonce UBIGINT NOT NULL
            code_hash {HASH}
            storage_root {HASH}
            block_number UBIGINT NOT NULL
            """,
            replace=True,
        ),
        _table(
            "gpu_nodes",
            "address",
            f"""
            address {HASH}
            price_wei_per_hour {WEI}
            stake_wei {WEI}
            gpu_count UINTEGER NOT NULL
            gpu_names VARCHAR[] NOT NULL
            vram_bytes UBIGINT NOT NULL
            peak_fp16_gflops UBIGINT NOT NULL
            cpu_model VARCHAR NOT NULL
            cpu_cores UINTEGER NOT NULL
            ram_bytes UBIGINT NOT NULL
            runtimes VARCHAR[] NOT NULL
            registered_at TIMESTAMP NOT NULL
            sequence UBIGINT NOT NULL
            """,
            replace=True,
        ),
        _table(
            "gpu_heartbeats",
            "node, sequence",
            f"""
            node {HASH}
            sequence UBIGINT NOT NULL
            timestamp TIMESTAMP NOT NULL
            utilisation_pct UINTEGER
            vram_used_bytes UBIGINT
            jobs_in_flight UINTEGER NOT NULL
            """,
        ),
        _table(
            "models",
            "name, version",
            f"""
            name VARCHAR NOT NULL
            version UINTEGER NOT NULL
            owner {HASH}
            model_type VARCHAR NOT NULL
            format VARCHAR NOT NULL
            manifest_cid VARCHAR NOT NULL
            total_bytes UBIGINT NOT NULL
            parameter_count UBIGINT NOT NULL
            vram_required_bytes UBIGINT NOT NULL
            registered_at TIMESTAMP NOT NULL
            """,
        ),
        _table(
            "jobs",
            "job_id",
            f"""
            job_id {HASH}
            requester {HASH}
            kind VARCHAR NOT NULL
            model VARCHAR NOT NULL
            manifest_cid VARCHAR
            input_cid VARCHAR NOT NULL
            epochs UINTEGER
            batch_size UINTEGER
            dataset_cid VARCHAR
            required_vram_bytes UBIGINT NOT NULL
            max_price_wei {WEI}
            submitted_at TIMESTAMP NOT NULL
            deadline TIMESTAMP NOT NULL
            """,
        ),
        _table(
            "assignments",
            "job_id, attempt",
            f"""
            job_id {HASH}
            attempt UINTEGER NOT NULL
            nodes VARCHAR[] NOT NULL
            redundant BOOLEAN NOT NULL
            seed {HASH}
            candidates UINTEGER NOT NULL
            eligible UINTEGER NOT NULL
            lease_expires TIMESTAMP NOT NULL
            """,
        ),
        _table(
            "results",
            "src_partition, src_offset",
            f"""
            job_id {HASH}
            node {HASH}
            attempt UINTEGER NOT NULL
            output_cid VARCHAR NOT NULL
            output_size UBIGINT NOT NULL
            fingerprint_scheme VARCHAR NOT NULL
            queue_ms UBIGINT NOT NULL
            load_ms UBIGINT NOT NULL
            compute_ms UBIGINT NOT NULL
            device_name VARCHAR NOT NULL
            execution_provider VARCHAR NOT NULL
            threads UINTEGER NOT NULL
            completed_at TIMESTAMP NOT NULL
            """,
        ),
        _table(
            "verdicts",
            "job_id, node",
            f"""
            job_id {HASH}
            node {HASH}
            verifier {HASH}
            outcome VARCHAR NOT NULL
            failed_checks VARCHAR[] NOT NULL
            performance_bps UINTEGER NOT NULL
            reputation_bps UINTEGER NOT NULL
            """,
        ),
        _table(
            "settlements",
            "job_id, provider",
            f"""
            job_id {HASH}
            provider {HASH}
            requester {HASH}
            transaction_hash {HASH}
            paid_wei {WEI}
            fee_wei {WEI}
            refund_wei {WEI}
            slashed_wei {WEI}
            """,
        ),
    )
}

INDEXES = (
    "CREATE INDEX IF NOT EXISTS receipts_block ON receipts (block_number)",
    "CREATE INDEX IF NOT EXISTS logs_address ON logs (address)",
    "CREATE INDEX IF NOT EXISTS ordered_from ON ordered_transactions (from_address)",
)

VIEWS: dict[str, str] = {
    "transactions_joined": """
        SELECT t.hash, t.nonce, r.block_number, r.block_hash, r.transaction_index,
               t.from_address, t.to_address, t.value, t.gas, t.gas_price, t.max_fee_per_gas,
               t.max_priority_fee_per_gas, t.input, t.transaction_type,
               b.timestamp AS block_timestamp, r.status AS receipt_status,
               r.gas_used AS receipt_gas_used,
               r.cumulative_gas_used AS receipt_cumulative_gas_used,
               r.effective_gas_price AS receipt_effective_gas_price,
               r.contract_address AS receipt_contract_address, t.dag_block
        FROM receipts r
        JOIN ordered_transactions t ON t.hash = r.transaction_hash
        JOIN blocks b ON b.number = r.block_number""",
    "dag_blocks": """
        SELECT p.hash, p.parents, len(p.parents) AS parent_count, p.proposer, p.timestamp,
               p.transaction_count, o.chain_index, o.is_chain_block, o.colour,
               o.selected_parent, o.blue_score, o.blue_work
        FROM proposed_blocks p LEFT JOIN dag_order o ON o.hash = p.hash""",
}

OFFSETS = "sink_offsets"
#: `transactions` is materialised from `transactions_joined` block by block, once a block and
#: all its receipts and ordered transactions are in (the join as a view is ~50x slower to
#: query); `materialised` records how far, in the same transaction as the rows.
MATERIALISED = "materialised"
TRANSACTIONS = (
    "CREATE TABLE IF NOT EXISTS transactions AS SELECT * FROM transactions_joined LIMIT 0",
    "CREATE INDEX IF NOT EXISTS transactions_hash ON transactions (hash)",
    "CREATE INDEX IF NOT EXISTS transactions_block ON transactions (block_number)",
    f"CREATE TABLE IF NOT EXISTS {MATERIALISED} (name VARCHAR PRIMARY KEY, through UBIGINT)",
)


def ddl() -> list[str]:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {OFFSETS} (topic VARCHAR, partition INTEGER, "
        '"offset" BIGINT, PRIMARY KEY (topic, partition))'
    ]
    statements += [t.create() for t in TABLES.values()]
    statements += list(INDEXES)
    statements += [f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, sql in VIEWS.items()]
    statements += list(TRANSACTIONS)
    return statements


#: Blocks above a height, with whether all their transactions can be joined yet.
COMPLETE_BLOCKS = """
    SELECT b.number, b.transaction_count = count(t.hash) AS complete
    FROM blocks b
    LEFT JOIN receipts r ON r.block_number = b.number
    LEFT JOIN ordered_transactions t ON t.hash = r.transaction_hash
    WHERE b.number > ?
    GROUP BY b.number, b.transaction_count
    ORDER BY b.number"""
