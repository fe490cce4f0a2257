"""Runs as durable records: the SQLite store, the state machine, scheduling,
executors, sweeps and the worker entry point. No UI imports (the REST API's Python
client, `spikeboard.Client`, lives in app/client.py)."""
