"""The analytics sink: the ledger's and the market's topics as DuckDB tables."""
