"""Temporal workflow code only: deterministic orchestration, no I/O.

Everything a workflow needs arrives in its input (see :mod:`patchflow.core.wavemodel`); side effects happen in
:mod:`activities`, which workflows call by name so that no I/O module is imported into the sandbox.
"""
