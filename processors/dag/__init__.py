"""DAG ordering: GHOSTDAG (pure core), reachability, and the DAG processor."""
