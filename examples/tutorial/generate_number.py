"""Counts up, one number every half second, and sends it to pipeline_b."""

import time

counter = 0


def step():
    global counter
    counter += 1
    time.sleep(0.5)
    print(f"Sending: {counter}")
    return counter
