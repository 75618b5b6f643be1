"""The FastAPI gateway: REST `/v1`, and (as the ledger grows) JSON-RPC, WebSocket,
OpenAI-compatible endpoints, the dashboard and metrics."""
