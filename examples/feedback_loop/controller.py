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
    temperature = input_data["plant"]
    if iteration == ITERATIONS:
        # The room's answer to our last power: keep it and send nothing. Raising Stop (not
        # calling porch.stop() with the last power) ends the loop with nothing in flight, so
        # the room never answers a controller that has already finished.
        raise porch.Stop
    iteration += 1
    if temperature is None:  # the first iteration: the loop starts here
        power = MAX_POWER
    else:
        error = SETPOINT_C - temperature
        integral += error
        power = min(max(KP * error + KI * integral, 0.0), MAX_POWER)
    if iteration % 100 == 0:
        print(f"iteration {iteration}: {temperature:.2f} C, heater at {power:.2f}")
    return power


def end():
    print(f"done: {iteration} iterations, room at {temperature:.2f} C (setpoint {SETPOINT_C} C)")
