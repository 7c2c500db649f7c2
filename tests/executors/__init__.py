"""Tests of the fleet executors (one module per backend)."""
