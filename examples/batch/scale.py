"""One branch: scales each reading by a constant factor."""

FACTOR = 10


def step(input_data):
    reading = input_data["read_csv"]
    return {**reading, "scaled": reading["value"] * FACTOR}
