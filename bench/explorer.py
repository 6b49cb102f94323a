"""How fast the explorer answers a click, measured through HTTP against a real server process.

Example:
    $ .venv/bin/python bench/explorer.py              # seed CNN L6 and ResNet50 layer3 (random weights)
    $ .venv/bin/python bench/explorer.py --clicks 50 --json

A click is what the page does when a unit is picked: GET /api/unit (the gradient through gradsight.node_gradient
on the unit's cone, the rectangles, the support) and then GET /api/unit.png (the picture). Every timed click is on
a unit not asked for before (no cache hits); units are drawn at random, seeded. The server runs in its own
process (`python -m gradsight.explorer`), as `gradsight explore` would; the client keeps one connection open.
Targets (issue 12): seed CNN < 50 ms, ResNet50 layer3 < 400 ms, on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np

CASES = [
    # (label, model, layer, grid, channels, image, target in ms)
    ("seed CNN L6 (TF 'same'), random input", "seed-cnn", "L6", (16, 16), 64, 0, 50.0),
    ("ResNet50 layer3 (random weights), ouzel.png", "resnet50", "layer3", (14, 14), 1024, 1, 400.0),
]


def start_server() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "gradsight.explorer", "--no-browser", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"the explorer did not start: {line!r}")
    return process, line.split()[2]


def click(client: httpx.Client, url: str, params: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    answer = client.get(url + "api/unit", params=params)
    answer.raise_for_status()
    data = answer.json()
    picture = client.get(url + data["urls"]["png"].lstrip("/"))
    picture.raise_for_status()
    return (time.perf_counter() - start) * 1000, data


def run_case(client, url, case, clicks: int, warmup: int, rng) -> dict:
    label, model, layer, (rows, cols), channels, image, target = case
    start = time.perf_counter()
    client.get(url + "api/layers", params={"model": model}).raise_for_status()
    load_s = time.perf_counter() - start
    cells = [(x, y, c) for x in range(rows) for y in range(cols) for c in range(channels)]
    order = rng.permutation(len(cells))[: warmup + clicks]
    chosen = [cells[i] for i in order]
    first = None
    times, server = [], []
    for i, (x, y, c) in enumerate(chosen):
        ms, data = click(client, url, {"model": model, "image": image, "layer": layer, "x": x, "y": y, "c": c})
        assert not data["cached"]
        if i == 0:
            first = ms
        if i >= warmup:
            times.append(ms)
            server.append(data["ms"])
    again, _ = click(client, url, {"model": model, "image": image, "layer": layer, "x": chosen[-1][0],
                                   "y": chosen[-1][1], "c": chosen[-1][2]})
    return {"case": label, "model load + trace s": round(load_s, 2), "first click ms": round(first, 1),
            "median ms": round(statistics.median(times), 1), "p90 ms": round(float(np.percentile(times, 90)), 1),
            "max ms": round(max(times), 1), "gradient share ms (median)": round(statistics.median(server), 1),
            "cached click ms": round(again, 1), "target ms": target,
            "met": statistics.median(times) < target and float(np.percentile(times, 90)) < target,
            "clicks": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=30, help="timed clicks per case (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed clicks first (default 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    process, url = start_server()
    try:
        with httpx.Client(timeout=120) as client:
            results = [run_case(client, url, case, args.clicks, args.warmup, rng) for case in CASES]
    finally:
        process.terminate()
        process.wait(10)
    import torch

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
               f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
               f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    print(f"Machine: {machine}")
    print("| case | median ms | p90 ms | max ms | of which gradient ms | cached ms | first click ms | model load s "
          "| target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for r in results:
        print(f"| {r['case']} | {r['median ms']} | {r['p90 ms']} | {r['max ms']} | {r['gradient share ms (median)']} "
              f"| {r['cached click ms']} | {r['first click ms']} | {r['model load + trace s']} | "
              f"< {r['target ms']:.0f} ms: {'met' if r['met'] else 'NOT met'} |")


if __name__ == "__main__":
    main()
