"""Top of the diamond: counts up from 1 and sends each number down both branches."""

import time

counter = 0


def step():
    global counter
    counter += 1
    time.sleep(0.5)
    print(f"pipeline_a: Sending number {counter}")
    return counter
