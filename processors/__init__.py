"""Stream processors: one subpackage each, a pure core plus a thin agent around it."""

import os

# Keccak for this process, py-evm's tries included: eth-hash picks pycryptodome first, whose
# Python wrapper costs ~4 us a hash; pysha3's is ~0.6 us (execution +10% tx/s). eth-hash
# reads the choice at the first hash, so setting it on import of the processors is early
# enough for every Lattice process (the gateway, workers and CLI all import them).
os.environ.setdefault("ETH_HASH_BACKEND", "pysha3")
