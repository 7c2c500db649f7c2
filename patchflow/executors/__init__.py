"""Executors: how a fleet is actually driven. One protocol (:mod:`patchflow.executors.base`), one subpackage per
backend: :mod:`~patchflow.executors.ssm` (AWS Systems Manager through boto3) and
:mod:`~patchflow.executors.simulated` (a simulated fleet for demos and scale tests).

May import: :mod:`patchflow.core`, :mod:`patchflow.errors` and the backend's SDK. Never Temporal, the history
database, the service edges or the CLI: activities call executors, executors call nothing of patchflow's above
them.
"""
