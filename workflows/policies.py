"""Named activity timeouts and retry policies (house rule: every activity call states both)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

#: Errors that never get better by retrying (bad input, unknown executor, …).
NON_RETRYABLE = [
    "InputError",
    "BaselineError",
    "CatalogError",
    "InventoryError",
    "PlanError",
    "NotFoundError",
]

#: Short look-ups (targets, windows, health): retried with backoff for about ten minutes.
QUICK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=NON_RETRYABLE,
)
QUICK_TIMEOUT = timedelta(minutes=2)

#: Patch and rollback batches: safe to retry because executors are idempotent on operation ids.
PATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=10,
    non_retryable_error_types=NON_RETRYABLE,
)
#: Sending a batch of installs (SSM: a package listing, the override list upload, SendCommand per instance).
SEND_START_TO_CLOSE = timedelta(minutes=30)
#: Upper bound for one batch of installs (a kernel update with a reboot can take a while).
PATCH_START_TO_CLOSE = timedelta(hours=3)

#: The history outbox (record_wave): retried until the history database takes the write — history is never
#: lost, and nothing waits for it but the wave's very end. Every database call inside is bounded.
HISTORY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,  # unlimited
    non_retryable_error_types=NON_RETRYABLE,
)
#: One catch-up may read many operation records (SSM: one S3 object per instance): it heartbeats meanwhile.
HISTORY_START_TO_CLOSE = timedelta(hours=2)
HISTORY_HEARTBEAT = timedelta(minutes=1)
