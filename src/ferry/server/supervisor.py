"""``--workers N``: uvicorn's supervisor, made to stop accepting before its workers drain.

The parent holds a copy of the listening socket that its workers share. uvicorn keeps it open
until the parent exits, so during a drain the kernel still completes connections into the
backlog that no worker will ever accept, and resets them at exit. Closing the parent's copy
first means that once each worker has closed its own (the first step of its shutdown), the port
refuses new connections at once.
"""

from __future__ import annotations

from uvicorn.supervisors.multiprocess import Multiprocess


class Supervisor(Multiprocess):
    def terminate_all(self) -> None:
        # 1. Stop accepting: drop the parent's copy of the listening socket.
        for sock in self.sockets:
            sock.close()
        # 2. SIGTERM each worker: it closes its copy, then drains within --drain-timeout.
        super().terminate_all()
