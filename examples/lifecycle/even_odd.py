"""The second script of the chain: its input_data is what counter.py's step() returned."""


def step(input_data):
    if input_data % 2 == 0:
        print(f"{input_data} is an even number")
    else:
        print(f"{input_data} is an odd number")
    return input_data
