"""Executors: how a fleet is actually driven. One protocol (:mod:`patchflow.executors.base`), one module per
backend (``simulated``, later ``ssm`` and real hosts)."""
