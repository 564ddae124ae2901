"""Sends the ids 1 to 40, then ends the stream."""

import porch

next_id = 0


def step():
    global next_id
    next_id += 1
    if next_id == 40:
        porch.stop()  # this id is still sent; then the stream ends
    return next_id
