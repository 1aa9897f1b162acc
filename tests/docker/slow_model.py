"""A test model that takes a second per batch, so a SIGTERM lands while a request is in flight."""

import time
from typing import Any


class Slow:
    """Lifecycle: ``load()`` once, then ``predict(batch)`` sleeps one second and returns the batch."""

    def load(self) -> None:
        pass

    def predict(self, batch: Any) -> Any:
        time.sleep(1.0)
        return batch
