"""Dataset runs (issue 13): throughput against compute alone, memory at N vs N/10 images, Ray vs local.

Run:  .venv/bin/python bench/dataset.py [--count 2000] [--small 200] [--chunk 200] [--batch-size 8] [--no-ray]

Generates ``count`` JPEGs (about ImageNet's sizes, 300-500 px, made from the bundled photo by crops, flips and
colour shifts) in a temporary folder, in sub-folders of ``chunk`` images, then on the embedded
EfficientNet-Lite0 (each part in a fresh process):

1. memory: the local engine on all ``count`` images in one run, then on the first ``small``: peak resident
   memory of the process, and its growth over the resident memory just before the run (flat = within 10%);
2. throughput: chunk by chunk, the local engine on the chunk and ``compute_batch`` alone on the same batches
   (read and preprocessed beforehand, untimed), alternating which goes first, so that the load of other
   processes on the machine falls on both alike; the ratio of the summed times (target >= 90%);
3. Ray: chunk by chunk (``--ray-chunk`` images), the Ray engine (one local Ray with this machine's CPUs,
   started once; each run starts its ``--ray-actors`` actors of ``--ray-actor-cpus`` CPUs and torch threads)
   and the local engine on the same chunk, alternating; Ray's start-up is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def make_images(folder: Path, count: int, chunk: int, seed: int = 0) -> None:
    from PIL import Image

    import gradsight

    photo = Image.open(gradsight.example_image_path()).convert("RGB")
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = int(rng.integers(300, 501)), int(rng.integers(250, 349))
        left, top = int(rng.integers(0, 501 - w)), int(rng.integers(0, 349 - h))
        image = photo.crop((left, top, left + w, top + h))
        image = image.resize((int(w * rng.uniform(0.8, 1.2)), int(h * rng.uniform(0.8, 1.2))))
        if i % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.7, 1.0, size=3)
        pixels = np.asarray(image, dtype=np.float64) * scale + rng.uniform(0, 1, size=3) * 255 * (1 - scale)
        sub = folder / f"chunk{i // chunk:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(pixels).astype(np.uint8)).save(sub / f"img{i:05d}.jpg", quality=90)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _run(inputs, out: Path, loaded, batch_size: int, **kw) -> tuple[float, int]:
    from gradsight.runs import run_dataset

    started = time.perf_counter()
    summary = run_dataset(inputs, out, model=loaded, recursive=True, batch_size=batch_size, **kw)
    assert summary.failed == 0, summary.failures[:3]
    return time.perf_counter() - started, summary.done


def _compute(paths: list[Path], loaded, batch_size: int) -> float:
    """Seconds of compute_batch alone on ``paths`` in the run's batches (reading and preprocessing untimed)."""
    from gradsight.images import load_image
    from gradsight.runs.compute import compute_batch, run_options

    options = run_options(["gradient"], {})["gradient"]
    # Every batch in memory first, then the batches back to back: the pure compute rate, with no reading
    # between batches (a pause there lets torch's worker threads go idle, which would flatter the run).
    batches = [np.stack([loaded.preprocess(load_image(p)) for p in paths[start:start + batch_size]])
               for start in range(0, len(paths), batch_size)]
    began = time.perf_counter()
    for arrays in batches:
        compute_batch(loaded, arrays, "gradient", options)
    return time.perf_counter() - began


def child(args) -> dict:
    """One part of the benchmark, in this fresh process."""
    import gradsight

    loaded = gradsight.load_model("efficientnet_lite0")
    chunks = sorted(p for p in args.folder.iterdir() if p.is_dir())
    if args.child == "memory":
        before = _rss_kib()
        seconds, done = _run([args.folder], args.out, loaded, args.batch_size, limit=args.limit)
        return {"images": done, "seconds": seconds, "rss_before_kib": before,
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    _compute(sorted(chunks[0].glob("*.jpg"))[:args.batch_size], loaded, args.batch_size)  # warm-up, both alike
    totals: dict[str, float] = {}
    images = 0
    if args.child == "ray":
        import logging

        import ray

        started = time.perf_counter()
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, logging_level=logging.WARNING)
        totals["ray_init"] = time.perf_counter() - started
        steps = {"ray": lambda c, out: _run([c], out, loaded, args.batch_size, engine="ray",
                                            workers=args.ray_actors, actor_cpus=args.ray_actor_cpus)[0],
                 "local": lambda c, out: _run([c], out, loaded, args.batch_size)[0]}
        groups = [chunks[i:i + args.ray_chunks] for i in range(0, len(chunks), args.ray_chunks)]
    else:
        steps = {"run": lambda c, out: _run([c], out, loaded, args.batch_size)[0],
                 "compute": lambda c, out: _compute(sorted(c.glob("*.jpg")), loaded, args.batch_size)}
        groups = [[c] for c in chunks]
    for i, group in enumerate(groups):
        names = list(steps) if i % 2 == 0 else list(steps)[::-1]
        for name in names:
            totals[name] = totals.get(name, 0.0) + sum(steps[name](c, args.out / f"{name}-{c.name}") for c in group)
        images += sum(len(list(c.glob("*.jpg"))) for c in group)
    return {"images": images, "seconds": totals}


def run_child(kind: str, folder: Path, out: Path, args, limit: int | None = None) -> dict:
    command = [sys.executable, str(HERE), "--child", kind, "--folder", str(folder), "--out", str(out),
               "--batch-size", str(args.batch_size), "--ray-actors", str(args.ray_actors),
               "--ray-actor-cpus", str(args.ray_actor_cpus), "--ray-chunks", str(max(1, args.ray_chunk // args.chunk))]
    if limit is not None:
        command += ["--limit", str(limit)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} part failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--ray-chunk", type=int, default=1000)
    parser.add_argument("--ray-actors", type=int, default=1)
    parser.add_argument("--ray-actor-cpus", type=int, default=2)
    parser.add_argument("--child", choices=("memory", "throughput", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ray-chunks", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    load = lambda: f"load average {os.getloadavg()[0]:.2f}"  # noqa: E731
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads); batch {args.batch_size}; {load()}")
    with tempfile.TemporaryDirectory(prefix="gradsight-bench-") as tmp:
        folder, outs = Path(tmp) / "images", Path(tmp)
        started = time.perf_counter()
        make_images(folder, args.count, args.chunk)
        size = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / args.count / 1024
        print(f"{args.count} JPEGs ({size:.0f} KiB each) generated in {time.perf_counter() - started:.0f} s")

        big = run_child("memory", folder, outs / "memory-big", args)
        small = run_child("memory", folder, outs / "memory-small", args, limit=args.small)
        for part in (big, small):
            print(f"memory, {part['images']} images in one run ({part['images'] / part['seconds']:.2f} images/s): "
                  f"peak RSS {part['peak_rss_kib'] / 1024:.0f} MiB, growth over the run "
                  f"{(part['peak_rss_kib'] - part['rss_before_kib']) / 1024:.0f} MiB")
        print(f"peak RSS at {big['images']} / at {small['images']} images: "
              f"{big['peak_rss_kib'] / small['peak_rss_kib']:.3f}; {load()}")

        part = run_child("throughput", folder, outs / "throughput", args)
        run, compute = part["seconds"]["run"], part["seconds"]["compute"]
        print(f"throughput, {part['images']} images interleaved by chunks of {args.chunk}: local engine "
              f"{part['images'] / run:.2f} images/s, compute only {part['images'] / compute:.2f} images/s: "
              f"{compute / run:.1%}; {load()}")
        if not args.no_ray:
            part = run_child("ray", folder, outs / "ray", args)
            ray, local = part["seconds"]["ray"], part["seconds"]["local"]
            print(f"ray ({args.ray_actors} actor(s) x {args.ray_actor_cpus} CPUs), {part['images']} images "
                  f"interleaved by chunks of {args.ray_chunk}: {part['images'] / ray:.2f} images/s vs local "
                  f"{part['images'] / local:.2f}: {local / ray:.1%}; Ray's start {part['seconds']['ray_init']:.1f} s "
                  f"once, each run's actor start included; {load()}")


if __name__ == "__main__":
    main()
