"""S3 staging throughput: the agent's staging path against the same S3 client used by hand.

Starts a real SeaweedFS (``weed server -s3``, the embedded stack's launcher, authentication on) on
free loopback ports in a temporary directory, writes random files, and for each size measures, in
one run and in alternating order:

* **by hand**: ``S3Client.upload_file`` / ``S3Client.download_file`` (cosmos.runtime.s3);
* **staging**: ``staging.stage_outputs`` / ``staging.stage_inputs`` of the agent (storage-root
  check, scheme registry, then the same client; no per-host cache, so every input is downloaded).

It prints MB/s for each (median of the rounds) and the staging/by-hand ratio (1.0 = staging adds
nothing). Usage::

    .venv/bin/python bench/s3_staging.py                # 8 MiB and 128 MiB files, 3 rounds
    .venv/bin/python bench/s3_staging.py --sizes 64 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cosmos.runtime import s3
from cosmos.security import storage
from cosmos.stack import seaweed
from cosmos.stratum.agent import staging
from cosmos.stratum.v1 import job_pb2

MiB = 1024 * 1024


async def _timed(coro: object) -> float:
    start = time.perf_counter()
    await coro  # type: ignore[misc]
    return time.perf_counter() - start


async def measure(server: seaweed.S3Server, tmp: Path, size_mib: int, rounds: int) -> dict[str, float]:
    client = s3.S3Client(server.config)
    registry = staging.default_registry([storage.S3Root(seaweed.BUCKET)], client)
    src = tmp / f"src-{size_mib}.bin"
    with src.open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    times: dict[str, list[float]] = {k: [] for k in ("hand_up", "stage_up", "hand_down", "stage_down")}
    for r in range(rounds):
        work = tmp / f"work-{size_mib}-{r}"
        work.mkdir()
        os.link(src, work / "out.bin")
        hand_key = f"s3://cosmos/bench/hand-{size_mib}-{r}.bin"
        stage_key = f"s3://cosmos/bench/stage-{size_mib}-{r}.bin"
        out = [job_pb2.Artifact(uri=stage_key, path="out.bin")]
        inp = [job_pb2.Artifact(uri=stage_key, path="in.bin")]
        # Alternate which goes first: neither always gets the warmer server or page cache.
        order = ["hand", "stage"] if r % 2 == 0 else ["stage", "hand"]
        for who in order:
            if who == "hand":
                times["hand_up"].append(await _timed(client.upload_file(src, hand_key)))
            else:
                times["stage_up"].append(await _timed(staging.stage_outputs(registry, out, work, "bench")))
        for who in order:
            if who == "hand":
                times["hand_down"].append(await _timed(client.download_file(hand_key, work / "hand.bin")))
            else:
                times["stage_down"].append(await _timed(staging.stage_inputs(registry, inp, work, "bench")))
        shutil.rmtree(work)
    src.unlink()
    mb = size_mib * MiB / 1e6
    rates = {k: mb / statistics.median(v) for k, v in times.items()}
    return {
        "size_mib": size_mib,
        **{f"{k}_mb_s": round(v, 1) for k, v in rates.items()},
        "upload_ratio": round(rates["stage_up"] / rates["hand_up"], 3),
        "download_ratio": round(rates["stage_down"] / rates["hand_down"], 3),
    }


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="cosmos-s3-bench-") as d:
        tmp = Path(d)
        with seaweed.standalone(tmp) as server:

            async def all_sizes() -> list[dict[str, float]]:
                return [await measure(server, tmp, size, args.rounds) for size in args.sizes]

            return asyncio.run(all_sizes())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 128], help="MiB")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'size':>8} {'up by hand':>11} {'up staging':>11} {'ratio':>6} {'down by hand':>13} "
          f"{'down staging':>13} {'ratio':>6}")  # fmt: skip
    for r in rows:
        print(
            f"{r['size_mib']:>5} MiB {r['hand_up_mb_s']:>7} MB/s {r['stage_up_mb_s']:>6} MB/s "
            f"{r['upload_ratio']:>6} {r['hand_down_mb_s']:>8} MB/s {r['stage_down_mb_s']:>8} MB/s "
            f"{r['download_ratio']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
