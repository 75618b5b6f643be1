"""Saved queries (`lattice sql --saved NAME`): what operators and analysts ask most."""

from __future__ import annotations

#: Keccak-256 of empty code: the code hash of every account that is not a contract.
EMPTY_CODE_HASH = "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"

SAVED: dict[str, tuple[str, str]] = {
    "tps": (
        "Transactions per second, by minute",
        """SELECT date_trunc('minute', block_timestamp) AS minute, count(*) AS transactions,
                  round(count(*) / 60.0, 2) AS tps
           FROM transactions GROUP BY 1 ORDER BY 1""",
    ),
    "dag-width": (
        "DAG width and red ratio, per chain block: blocks merged and how many were red",
        """SELECT chain_index, count(*) AS merged_blocks,
                  count(*) FILTER (WHERE colour = 'red') AS red_blocks,
                  round(count(*) FILTER (WHERE colour = 'red') / count(*), 3) AS red_ratio
           FROM dag_order GROUP BY chain_index ORDER BY chain_index""",
    ),
    "gas": (
        "Gas used per minute and the average block fill",
        """SELECT date_trunc('minute', timestamp) AS minute, count(*) AS blocks,
                  sum(gas_used) AS gas_used, round(avg(gas_used / gas_limit), 6) AS avg_fill
           FROM blocks GROUP BY 1 ORDER BY 1""",
    ),
    "top-contracts": (
        "Contracts by transactions received, with the gas they used",
        f"""SELECT t.to_address AS contract, count(*) AS transactions,
                  sum(t.receipt_gas_used) AS gas_used
           FROM transactions t
           JOIN (SELECT DISTINCT address FROM accounts
                 WHERE code_hash <> '{EMPTY_CODE_HASH}') c ON c.address = t.to_address
           GROUP BY 1 ORDER BY transactions DESC, contract LIMIT 20""",
    ),
    "gpu-utilisation": (
        "Per node: latest heartbeat, average GPU utilisation and jobs in flight",
        """SELECT n.address AS node, n.gpu_count, n.vram_bytes, n.cpu_model,
                  max(h.timestamp) AS last_heartbeat,
                  round(avg(h.utilisation_pct), 1) AS avg_util_pct,
                  round(avg(h.jobs_in_flight), 2) AS avg_jobs_in_flight
           FROM gpu_nodes n LEFT JOIN gpu_heartbeats h ON h.node = n.address
           GROUP BY ALL ORDER BY node""",
    ),
    "job-latency": (
        "Job latency (submitted to first result) percentiles, by kind, in milliseconds",
        """SELECT j.kind, count(*) AS jobs,
                  quantile_cont(epoch_ms(r.first) - epoch_ms(j.submitted_at), 0.5) AS p50_ms,
                  quantile_cont(epoch_ms(r.first) - epoch_ms(j.submitted_at), 0.9) AS p90_ms,
                  quantile_cont(epoch_ms(r.first) - epoch_ms(j.submitted_at), 0.99) AS p99_ms
           FROM jobs j
           JOIN (SELECT job_id, min(completed_at) AS first FROM results GROUP BY 1) r USING (job_id)
           GROUP BY 1 ORDER BY 1""",
    ),
    "provider-earnings": (
        "Providers: jobs paid, wei earned, wei slashed, verdicts",
        """SELECT s.provider, count(*) FILTER (WHERE s.paid_wei > 0) AS jobs_paid,
                  sum(s.paid_wei) AS earned_wei, sum(s.slashed_wei) AS slashed_wei,
                  (SELECT count(*) FROM verdicts v WHERE v.node = s.provider
                     AND v.outcome = 'ACCEPTED') AS accepted,
                  (SELECT count(*) FROM verdicts v WHERE v.node = s.provider
                     AND v.outcome = 'REJECTED') AS rejected
           FROM settlements s
           WHERE s.provider <> '0x0000000000000000000000000000000000000000'
           GROUP BY 1 ORDER BY earned_wei DESC""",
    ),
}
