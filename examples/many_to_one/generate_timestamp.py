"""Sends the current Unix time, in whole seconds, every half second."""

import time


def step():
    time.sleep(0.5)
    timestamp = int(time.time())
    print(f"pipeline_y generated timestamp: {timestamp}")
    return timestamp
