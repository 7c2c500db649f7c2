"""Temporal workflow code only: deterministic orchestration, no I/O.

Everything a workflow needs arrives in its input (see :mod:`patchflow.core.wavemodel`); side effects happen in
:mod:`activities`, which workflows call by name so that no I/O module is imported into the sandbox.

May import: the standard library, temporalio, and pure :mod:`patchflow.core` modules inside
``workflow.unsafe.imports_passed_through()``; never settings, executors, the database or an I/O library (an
import-linter contract in ``pyproject.toml`` keeps it so).
"""
