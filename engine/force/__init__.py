"""FORCE training of LIF networks and their parameter-matched rate twins (shared/spec/FORCE.md, docs/force.md)."""
