"""Opens a resource at start and releases it in end(), which runs on Ctrl+C or end of stream."""

import os
import tempfile
from pathlib import Path

out_dir = Path(os.environ.get("PORCH_EXAMPLE_OUT") or tempfile.gettempdir())
out_dir.mkdir(parents=True, exist_ok=True)
# Held open across iterations on purpose: end() is where it gets closed.
log_file = open(out_dir / "end_hook.log", "w", encoding="utf-8")  # noqa: SIM115
iteration = 0


def step():
    global iteration
    iteration += 1
    log_file.write(f"iteration {iteration}\n")
    print(f"Running iteration {iteration}")


def end():
    log_file.close()
    print("Resource closed")
