"""Runs as durable records: the SQLite store, the state machine, scheduling,
executors, sweeps, the worker entry point and a REST client. No UI imports."""
