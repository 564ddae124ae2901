"""Adds up delta_time to tell when each full second has passed."""

import time

delta_time = 0.0  # set by the runtime before each step(): seconds since the previous step()
elapsed_s = 0.0
sec_passed = 0


def step():
    global elapsed_s, sec_passed
    elapsed_s += delta_time
    if elapsed_s >= 1.0:
        elapsed_s -= 1.0
        sec_passed += 1
        print(f"{sec_passed} second(s) have passed")
    time.sleep(0.01)  # don't spin a core; the accumulator keeps the count exact anyway
