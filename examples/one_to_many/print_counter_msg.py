"""Shared by pipeline_b and pipeline_c: each loads its own copy of this module."""


def step(input_data):
    msg = input_data["pipeline_a"]
    print(f"I got a message from pipeline_a: {msg}")
