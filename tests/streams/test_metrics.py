from __future__ import annotations

import json

from prometheus_client import generate_latest

from streams.metrics import record_statistics


def test_lag_is_the_end_minus_the_next_offset() -> None:
    stats = {
        "client_id": "lattice-test",
        "topics": {
            "t": {
                "partitions": {
                    "0": {"app_offset": 40, "hi_offset": 52},
                    "1": {"app_offset": -1001, "hi_offset": 9},  # nothing read yet: unknown
                    "-1": {"app_offset": -1, "hi_offset": -1},
                }
            }
        },
    }
    record_statistics(json.dumps(stats))
    text = generate_latest().decode()
    assert (
        'lattice_consumer_lag_records{client="lattice-test",partition="0",topic="t"} 12.0' in text
    )
    assert 'partition="1",topic="t"' not in text
    record_statistics("not json")  # ignored
