"""A tamper-evident log per sensor: each reading's digest is a slow key-derivation hash
(about 1 ms of CPU) of the reading, salted with the previous digest of the same sensor.

The CPU-heavy part runs in 2 processes at once ("replicas": 2 in digest.json). The previous
digest is per-sensor state in this script's globals, and each replica is its own process with
its own globals: "partition_by": "sensor" sends every reading of a sensor to the same replica,
so the chain of a sensor is never split between two processes.
"""

import hashlib
import os

ROUNDS = 4000  # PBKDF2 rounds: about 1 ms of CPU per reading

last_digest = {}  # sensor -> the digest of its previous reading, in this process only


def step(input_data):
    reading = input_data["readings"]
    sensor = reading["sensor"]
    message = f"{sensor} {reading['index']} {reading['celsius']}".encode()
    salt = last_digest.get(sensor, b"start")
    digest = hashlib.pbkdf2_hmac("sha256", message, salt, ROUNDS)
    last_digest[sensor] = digest
    return {"sensor": sensor, "index": reading["index"], "digest": digest.hex(), "pid": os.getpid()}
