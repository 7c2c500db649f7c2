"""The lab fleet: real Debian machines on one box, for demos, end-to-end tests and benchmarks.

* :mod:`.repo` — generated test packages (``dpkg-deb``) in an apt repository with ``lab``, ``lab-updates`` and
  ``lab-security`` suites, its manifest, and patchflow's catalog for it.
* :mod:`.rootfs` — the Debian root file system every host shares read-only (``mmdebstrap --variant=apt``,
  built once and cached under the data directory), and the layer with the lab's initial packages.
* :mod:`.supervisor` — one process per host: mounts the host's overlay, boots it in its own PID and mount
  namespace (``unshare``) with its own sshd on a loopback address, and boots it again after a reboot.
* :mod:`.fleet` — :class:`~.fleet.Lab`: ``up``, ``status``, ``publish``, ``catalog``, ``down``; the HTTP server
  for the repository; the SSH inventory.

Networking is loopback only: every host listens on its own 127.0.0.0/8 address, the repository on 127.0.0.1.
Needs root (overlayfs, namespaces, chroot) and the Debian tools ``mmdebstrap`` and ``dpkg-deb``.

May import anything (it is a test backend): production code never imports it.
"""
