"""Analyses of trained (or untrained) networks: inference-only functions of
(weights, config, data) that return plain, JSON-serialisable results."""
