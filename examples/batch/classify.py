"""The other branch: labels each reading high or low."""

THRESHOLD = 50


def step(input_data):
    reading = input_data["read_csv"]
    label = "high" if reading["value"] >= THRESHOLD else "low"
    return {**reading, "label": label}
