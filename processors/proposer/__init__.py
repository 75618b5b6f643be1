"""Block proposers: the mempool (pure core) and the proposer processor."""
