"""The local backend's server process: ``python -m shoal.services.local_server FD``.

The deploying process binds the listening socket (so a port in use fails ``deploy`` at once) and
passes it as ``FD``; it writes the pickled ``ServiceSettings`` to this process's stdin, prefixed by
their length, and keeps stdin open. This process loads the handler, writes one JSON line to stdout
(``{"ready": pid}``, or ``{"error": {...}}`` when the handler cannot be loaded) and serves with
uvicorn until SIGTERM/SIGINT or until its stdin closes (the deploying process ended).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
from typing import Any

HEADER = struct.Struct(">Q")


def _read_settings(stream: Any) -> Any:
    import cloudpickle

    (size,) = HEADER.unpack(stream.read(HEADER.size))
    return cloudpickle.loads(stream.read(size))


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _stop_when_stdin_closes(server: Any, stream: Any) -> None:
    while stream.read(4096):
        pass
    server.should_exit = True


def main(argv: list[str]) -> int:
    listener = socket.socket(fileno=int(argv[1]))
    stdin = sys.stdin.buffer
    try:
        settings = _read_settings(stdin)
        from .app import service_app
        from .handler import ServiceHandler, apply_environment

        apply_environment(settings)

        handler = ServiceHandler(settings, replica=f"local-{os.getpid()}")
    except BaseException as exc:  # noqa: BLE001 - reported to the deploying process, which raises it
        from ..error_records import error_record

        _say({"error": error_record(exc)})
        return 1
    import uvicorn

    config = uvicorn.Config(service_app(handler), log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    threading.Thread(target=_stop_when_stdin_closes, args=(server, stdin), daemon=True).start()
    _say({"ready": os.getpid()})
    server.run(sockets=[listener])
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(main(sys.argv))
