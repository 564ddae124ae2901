"""Put first in a pipeline's scripts to run it at most MAX_RATE_HZ iterations per second.

Passes its input through unchanged, so the next script sees what it would have seen.
"""

import time

MAX_RATE_HZ = 10
PERIOD_S = 1.0 / MAX_RATE_HZ

last_step_s = None


def step(input_data):
    global last_step_s
    if last_step_s is not None:
        wait_s = last_step_s + PERIOD_S - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
    last_step_s = time.monotonic()
    return input_data
