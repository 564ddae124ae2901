"""Prints what pipeline_a sent; input_data is keyed by the source pipeline's name."""


def step(input_data):
    number = input_data["pipeline_a"]
    print(f"Received: {number}")
