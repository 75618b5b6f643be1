"""The GPU worker: hardware probe, model runtime, signing and the job loop."""
