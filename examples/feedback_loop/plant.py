"""The room: the heater warms it, the outside (colder at night) cools it.

One iteration is one simulated minute; the room starts at the outside temperature.
"""

import math

HEAT_C_PER_POWER = 0.5  # degrees per minute at power 1.0
LOSS_PER_MINUTE = 0.05  # share of the indoor-outdoor difference lost each minute

minute = 0
temperature = 8.0


def outside_c(at_minute):
    """8 C at midnight, 16 C at noon."""
    return 12.0 - 4.0 * math.cos(2 * math.pi * at_minute / 1440)


def step(input_data):
    global minute, temperature
    power = input_data["controller"]
    minute += 1
    temperature += HEAT_C_PER_POWER * power - LOSS_PER_MINUTE * (temperature - outside_c(minute))
    return temperature
