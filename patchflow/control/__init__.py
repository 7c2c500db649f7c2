"""The Temporal client side: start, inspect and act on waves (:mod:`~patchflow.control.waves`), Temporal
Schedules for recurring waves (:mod:`~patchflow.control.scheduling`), plan dry runs
(:mod:`~patchflow.control.dryrun`) and the embedded dev server (:mod:`~patchflow.control.devserver`).

May import: :mod:`patchflow.core`, temporalio, :mod:`patchflow.config`, the workflow classes of
:mod:`workflows` (to start and query them), :mod:`patchflow.executors` (a dry run asks the fleet what is
installed) and :mod:`patchflow.store` (pinned sets are also kept in the history database). Never the API, Slack
or the CLI: those call this room, not the other way round.
"""
