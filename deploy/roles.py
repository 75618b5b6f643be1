"""The roles a node can run (`lattice node --roles`), kept apart from `deploy.node` so
that the command line can list them without loading the server stack each child would
otherwise import at start."""

#: The roles a node may take beyond its gateway and execution replica. `dag` and
#: `publisher` are work done once per network, as hot-standby sets: any number of nodes
#: may take them, one member is active and another takes over when it dies
#: (`processors.standby`). `market` is two such sets, the matcher's and the verifier's.
ROLES: dict[str, str] = {
    "proposer": "propose blocks signed with the node's key",
    "analytics": "keep the DuckDB analytics store of the ledger and the market",
    "dag": "order the DAG into the final chain (hot standby: one node of those with it)",
    "publisher": "publish the ledger's receipts and executed blocks (hot standby, likewise)",
    "market": "match and verify jobs and settle them on the ledger (hot standby, likewise)",
    "worker": "a compute worker, paid to worker_key_file's address (it must hold the stake)",
}
