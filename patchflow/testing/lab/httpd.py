"""The lab repository's HTTP server: ``python -m patchflow.testing.lab.httpd DIR PORT_FILE [PORT]``.

Serves DIR on 127.0.0.1 (never another address), on PORT or a free port, and writes the port it bound to
PORT_FILE once it listens.
"""

from __future__ import annotations

import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


def main(directory: str, port_file: str, port: int = 0) -> None:
    handler = functools.partial(_Quiet, directory=directory)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(port_file)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
