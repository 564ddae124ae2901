"""Sends 20 readings from each of 16 sensors, interleaved, then ends the stream."""

import porch

SENSORS = 16
PER_SENSOR = 20

n = 0


def step():
    global n
    sensor, index = n % SENSORS, n // SENSORS
    n += 1
    if n == SENSORS * PER_SENSOR:
        porch.stop()  # this reading is still sent, then the end of the stream
    return {"sensor": f"s{sensor:02d}", "index": index, "celsius": 15 + (sensor * 7 + index) % 13}
