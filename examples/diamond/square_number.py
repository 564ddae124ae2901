"""Right branch: squares the number."""


def step(input_data):
    num = input_data["pipeline_a"]
    squared = num * num
    print(f"pipeline_c: Squared {num} to {squared}")
    return squared
