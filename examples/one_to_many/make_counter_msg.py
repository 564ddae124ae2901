"""Counts up; every target pipeline gets every number."""

import time

counter = 0


def step():
    global counter
    counter += 1
    time.sleep(0.5)
    print(f"Sending {counter} to pipeline_b and pipeline_c")
    return counter
