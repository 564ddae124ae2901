"""Prints each description, in the order the ids were sent, and a count at the end."""

count = 0


def step(input_data):
    global count
    count += 1
    print(input_data["lookup"])


def end():
    print(f"{count} lookups")
