"""patchflow: staged, pinned, durable OS patch rollouts above AWS Systems Manager Patch Manager."""

__version__ = "0.1.0"
