"""Keeps the newest digest of each sensor; at the end of the stream prints one line per sensor
and how many processes did the digesting."""

latest = {}  # sensor -> (index, digest) of its newest reading
counts = {}  # sensor -> readings received
processes = set()


def step(input_data):
    entry = input_data["digest"]
    sensor = entry["sensor"]
    counts[sensor] = counts.get(sensor, 0) + 1
    if entry["index"] >= latest.get(sensor, (-1, ""))[0]:
        latest[sensor] = (entry["index"], entry["digest"])
    processes.add(entry["pid"])


def end():
    for sensor, (_, digest) in sorted(latest.items()):
        print(f"{sensor}: {counts[sensor]} readings, chain {digest[:16]}")
    total = sum(counts.values())
    ran_in = f"{len(processes)} process" + ("es" if len(processes) != 1 else "")
    print(f"{total} readings from {len(latest)} sensors, digested in {ran_in}")
