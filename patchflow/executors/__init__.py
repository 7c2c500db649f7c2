"""Executors: how a fleet is actually driven. One protocol (:mod:`patchflow.executors.base`), one module per
backend: :mod:`~patchflow.executors.ssm` (AWS Systems Manager through boto3) and
:mod:`~patchflow.executors.simulated` (a simulated fleet for demos and scale tests)."""
