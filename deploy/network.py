"""Which network a host joins: reaching its Kafka, and agreeing on its ledger.

Before a node (or the devnet) starts anything, it checks that the bootstrap servers answer
within seconds (a wrong address otherwise hangs every client, retrying quietly), and that
the network's chain id and genesis are its own: the first host to start on an empty log
writes them to `lattice.network`, and every later one compares before serving. A node
configured for another ledger would otherwise execute the same blocks into a different
state and serve it as the network's.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processors.execution.genesis import Genesis, GenesisError, dev_genesis
from processors.execution.genesis import load_genesis as genesis_file
from processors.execution.ledger import genesis_block
from processors.execution.transactions import ChainRules
from schemas.events import NetworkGenesis
from streams.kafka import Producer, Reader, client_config, decodable, from_beginning
from streams.settings import Settings
from streams.topics import topic

NETWORK = topic("network")


class NetworkError(RuntimeError):
    """The network cannot be reached, or is another ledger than this host's."""


def load_genesis(settings: Settings) -> Genesis:
    """The genesis this host is configured with (`genesis_file`, or the development one)."""
    try:
        if settings.genesis_file:
            return genesis_file(settings.genesis_file, settings.block_gas_limit)
        return dev_genesis(settings.block_gas_limit)
    except GenesisError as exc:
        raise NetworkError(str(exc)) from None


def rules_of(settings: Settings) -> ChainRules:
    return ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)


def ours(genesis: Genesis, rules: ChainRules, node: str) -> NetworkGenesis:
    header = genesis_block(genesis, rules)
    return NetworkGenesis(
        chain_id=rules.chain_id,
        genesis_hash=bytes(header.hash),
        state_root=bytes(header.state_root),
        node=node,
    )


def mismatch(mine: NetworkGenesis, network: NetworkGenesis) -> str | None:
    """Why this host may not join the network, or None when it is the same ledger."""
    if mine.chain_id != network.chain_id:
        return (
            f"this node's chain id is {mine.chain_id} but the network's is "
            f"{network.chain_id} (set by node {network.node!r}); start it with "
            f"--chain-id {network.chain_id} or point it at its own network"
        )
    if mine.genesis_hash != network.genesis_hash:
        return (
            f"this node's genesis block is 0x{mine.genesis_hash.hex()} but the network's is "
            f"0x{network.genesis_hash.hex()} (set by node {network.node!r}); start it with "
            "the network's genesis file (--genesis FILE)"
        )
    return None


def probe(bootstrap: str, timeout: float = 5.0, extra: dict[str, str] | None = None) -> None:
    """Fail within `timeout` seconds, saying so, when no broker answers at `bootstrap`."""
    admin = AdminClient(client_config(bootstrap, {"client.id": "lattice-probe"}, extra))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise NetworkError(
            f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s ({exc.args[0]}); "
            "check the address (--kafka HOST:PORT) and that the broker is up"
        ) from None


def first_record(bootstrap: str) -> NetworkGenesis | None:
    reader = Reader(bootstrap, client_id="lattice-network")
    try:
        for record in decodable(reader.read(from_beginning(NETWORK.name, [0])), reader.codec):
            if isinstance(record.event, NetworkGenesis):
                return record.event
        return None
    finally:
        reader.close()


def join(bootstrap: str, mine: NetworkGenesis, timeout: float = 30.0) -> NetworkGenesis:
    """The network's genesis, writing this host's when the log has none; raises
    NetworkError when it is another ledger."""
    network = first_record(bootstrap)
    if network is None:
        producer = Producer(bootstrap, client_id="lattice-network")
        try:
            producer.send(NETWORK, mine, key="genesis").result(timeout)
        finally:
            producer.close()
        # Two hosts may have written at once: the first record on the log is the network's.
        deadline = time.monotonic() + timeout
        while (network := first_record(bootstrap)) is None:
            if time.monotonic() > deadline:
                raise NetworkError(f"{NETWORK.name}: the genesis written is not readable")
            time.sleep(0.2)
    problem = mismatch(mine, network)
    if problem is not None:
        raise NetworkError(problem)
    return network
