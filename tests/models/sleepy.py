"""A deliberately slow test model: sleeps ``FERRY_TEST_SLEEP`` seconds per batch, then echoes."""

import os
import time
from typing import Any


class Sleepy:
    def load(self) -> None:
        self.delay = float(os.environ.get("FERRY_TEST_SLEEP", "0.05"))

    def predict(self, batch: Any) -> Any:
        time.sleep(self.delay)
        return batch
