"""Composition root of imaging-cloud: the `imaging-cloud` command wires the packages together."""
