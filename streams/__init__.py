"""Kafka plumbing and nothing else: settings, the topic catalogue, typed Avro producer and
consumer helpers, admin, the embedded broker launcher and the devnet's topic archive."""
