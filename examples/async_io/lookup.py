"""An I/O-bound stage: each lookup waits 50 to 150 ms (a stand-in for an HTTP call or a query).

`async def step()` is awaited; the config's `"concurrency": 20` lets 20 lookups wait at once,
so 40 take about 0.3 s instead of 4 s. Outputs still leave in the order the ids came in.
"""

import asyncio
import random


async def lookup(item_id):
    await asyncio.sleep(random.uniform(0.05, 0.15))  # e.g. `await session.get(...)`
    return {"id": item_id, "square": item_id * item_id}


async def step(input_data):
    return await lookup(input_data["ids"])
