"""Temporal activities: every side effect of a wave or a scheduled firing — executors, the history database,
clocks and time zones, HTTP health checks, the Temporal client (a firing checks for running waves).

Activities are methods on classes holding their clients (:class:`~activities.patching.WaveActivities`,
:class:`~activities.scheduling.ScheduleActivities`), so tests inject fleets without monkeypatching. They turn domain
errors into ``ApplicationError`` at this boundary.

May import anything below the service edges: the Temporal client side, workflows' data, executors, the store,
metrics, config and core; never the API, Slack or the CLI.
"""
