"""Left branch: doubles the number."""


def step(input_data):
    num = input_data["pipeline_a"]
    doubled = num * 2
    print(f"pipeline_b: Doubled {num} to {doubled}")
    return doubled
