"""EVM execution: the state transition over the ordered DAG (pure core and agent)."""
