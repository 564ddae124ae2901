"""A thermostat: reads the room's temperature, sets the heater's power (a PI controller).

Its config has "fan_in": "any", so it runs once at start with {"plant": None} (nothing measured
yet): that first output starts the loop. Every later iteration gets the plant's answer.
"""

import porch

SETPOINT_C = 21.0
ITERATIONS = 1000
KP = 0.8  # power per degree of error
KI = 0.05  # power per accumulated degree of error
MAX_POWER = 3.0

iteration = 0
integral = 0.0
temperature = None


def step(input_data):
    global iteration, integral, temperature
    iteration += 1
    temperature = input_data["plant"]
    if temperature is None:  # the first iteration: the loop starts here
        power = MAX_POWER
    else:
        error = SETPOINT_C - temperature
        integral += error
        power = min(max(KP * error + KI * integral, 0.0), MAX_POWER)
    if iteration % 100 == 0:
        print(f"iteration {iteration}: {temperature:.2f} C, heater at {power:.2f}")
    if iteration == ITERATIONS:
        porch.stop()  # this power is still sent; then the end of stream goes round the loop
    return power


def end():
    print(f"done: {iteration} iterations, room at {temperature:.2f} C (setpoint {SETPOINT_C} C)")
