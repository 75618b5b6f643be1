"""The compute domain, below both its users (the workers and the verifier): model manifests
and import (`models`), the model runtime on ONNX Runtime (`runtime`) and training on torch
(`training`). A worker runs jobs with it; the verifier re-runs them with the same code."""
