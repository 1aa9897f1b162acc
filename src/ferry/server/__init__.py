"""Running the server: HTTP and gRPC side by side, with ports, connections, probes and workers around uvicorn.

``run(settings)`` is what ``ferry serve`` calls. The app itself lives in ``ferry.http``; this
package decides how clients reach it: Open Inference gRPC beside it over the same data plane
(``transports``), exclusive ports (``ports``), bounded connections (``connections``), a probe
listener that never waits behind work (``probes``) and a supervisor that stops accepting before
its workers drain (``supervisor``).
"""

from ferry.server.run import run

__all__ = ["run"]
