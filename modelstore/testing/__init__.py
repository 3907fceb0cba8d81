"""Helpers shipped for tests, benchmarks and the demo: synthetic models built in code."""
