"""Proof of compute: verdicts on job results and the settlements that follow them."""
