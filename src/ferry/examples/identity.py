"""The identity test model: returns its input, as the reference ``/score`` API does."""

from typing import Any


class Identity:
    """Lifecycle: ``load()`` once, then ``predict(batch)`` per batch; the batch comes back unchanged."""

    def load(self) -> None:
        pass

    def predict(self, batch: Any) -> Any:
        return batch
