"""The per-pipeline worker process: script host, iteration loop, fan-in scheduler, data links."""
