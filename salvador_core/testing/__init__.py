"""Conformance suite for salvador backends."""
