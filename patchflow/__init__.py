"""patchflow: staged, pinned, durable OS patch rollouts above AWS Systems Manager Patch Manager.

The package is organised in rooms (README "Architecture"): ``core`` (pure domain), ``control`` (Temporal client),
``executors``, ``store`` (history database), ``service`` (API, Slack, worker), ``cli``, ``testing``, and three
modules shared by all: ``config``, ``errors`` and ``metrics``. This top-level module may import nothing of its
rooms, so importing any room never drags in another.
"""

__version__ = "0.1.0"
