"""Sends a random number between 1 and 100 every half second."""

import random
import time


def step():
    time.sleep(0.5)
    number = random.randint(1, 100)
    print(f"pipeline_x generated: {number}")
    return number
