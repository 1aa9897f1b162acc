"""A test model that is instant, except that a negative input blocks its caller for ``FERRY_TEST_WEDGE`` seconds.

Its warm-up (a positive sample) is instant, so Ferry runs it on the event loop: a negative input
then wedges the request loop, as a blocking bug in a model or a library would.
"""

import os
import time
from typing import Any


class Wedge:
    def load(self) -> None:
        self.delay = float(os.environ.get("FERRY_TEST_WEDGE", "7"))

    def predict(self, batch: Any) -> Any:
        if (batch < 0).any():
            time.sleep(self.delay)
        return batch
