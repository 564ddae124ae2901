"""Sends data/readings.csv one row per iteration, then ends the stream."""

import csv
from pathlib import Path

import porch

with (Path(__file__).resolve().parent / "data" / "readings.csv").open(newline="") as f:
    rows = list(csv.DictReader(f))
sent = 0


def step():
    global sent
    if sent == len(rows):
        raise porch.Stop  # only reached for an empty file: end now, send nothing
    row = rows[sent]
    sent += 1
    if sent == len(rows):
        porch.stop()  # this row is still sent, then end of stream flows downstream
    return {"row": sent, "sensor": row["sensor"], "value": int(row["value"])}
