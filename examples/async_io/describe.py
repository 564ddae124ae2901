"""A plain (sync) script after the async one: it runs when that item's lookup is done."""


def step(record):
    return f"id {record['id']}: square {record['square']}"
