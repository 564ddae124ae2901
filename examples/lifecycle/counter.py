"""Top-level code runs once at start; step() runs once per iteration."""

import time

counter = 0
print(f"Initial counter value {counter}")


def step():
    global counter
    counter += 1
    time.sleep(0.5)
    print(f"Counter value this iteration: {counter}")
    return counter
