"""The long-running service edges: the REST API (:mod:`~patchflow.service.api`, its JSON shapes in
:mod:`~patchflow.service.apimodel`), Slack approvals (:mod:`~patchflow.service.slack`) and the Temporal worker
process (:mod:`~patchflow.service.worker`, which hosts :mod:`workflows` and :mod:`activities`).

May import anything below it (control, activities, workflows, executors, store, metrics, core, config) but never
the CLI: the CLI starts these services, they never reach back into it.
"""
