"""Prints delta_time: 0.000 on the first step(), then the time the previous iteration took."""

import time

delta_time = 0.0  # set by the runtime before each step()


def step():
    print(f"Time since last step() call: {delta_time:.3f} seconds")
    time.sleep(0.2)
