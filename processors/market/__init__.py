"""The compute market: content addressing, signed job requests, matching, rewards."""
