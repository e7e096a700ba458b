"""Which S3 client: obstore (Rust object_store) against aiobotocore, on the same files, one run.

Starts a real SeaweedFS (the embedded stack's launcher) on free loopback ports, then for each round
uploads a random file multipart (16 MiB parts, 4 in flight) and streams it back to disk with each
client, alternating which goes first, and prints MB/s (medians) and the obstore/aiobotocore ratios.
aiobotocore is a bench extra: ``.venv/bin/pip install -e '.[bench]'``. Usage::

    .venv/bin/python bench/s3_clients.py --size 96 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import obstore
from aiobotocore.session import get_session  # type: ignore[import-not-found]
from obstore.store import S3Store

from cosmos.stack import seaweed

PART = 16 * 1024 * 1024


async def boto_round(server: seaweed.S3Server, src: Path, key: str, out: Path) -> tuple[float, float]:
    size = await asyncio.to_thread(os.path.getsize, src)
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.keys.access_key_id,
        aws_secret_access_key=server.keys.secret_access_key,
        region_name="us-east-1",
    ) as c:
        start = time.perf_counter()
        mp = await c.create_multipart_upload(Bucket=seaweed.BUCKET, Key=key)
        sem = asyncio.Semaphore(4)

        async def part(i: int, off: int) -> dict[str, Any]:
            async with sem:
                with src.open("rb") as f:
                    f.seek(off)
                    data = f.read(PART)
                r = await c.upload_part(
                    Bucket=seaweed.BUCKET, Key=key, UploadId=mp["UploadId"], PartNumber=i, Body=data
                )
                return {"PartNumber": i, "ETag": r["ETag"]}

        parts = await asyncio.gather(*(part(i + 1, o) for i, o in enumerate(range(0, size, PART))))
        await c.complete_multipart_upload(
            Bucket=seaweed.BUCKET, Key=key, UploadId=mp["UploadId"], MultipartUpload={"Parts": list(parts)}
        )
        up = time.perf_counter() - start
        start = time.perf_counter()
        r = await c.get_object(Bucket=seaweed.BUCKET, Key=key)
        with out.open("wb") as f:
            async for chunk in r["Body"].iter_chunks(1 << 20):
                f.write(chunk)
        return up, time.perf_counter() - start


async def obstore_round(server: seaweed.S3Server, src: Path, key: str, out: Path) -> tuple[float, float]:
    store = S3Store(
        seaweed.BUCKET,
        endpoint=server.endpoint,
        access_key_id=server.keys.access_key_id,
        secret_access_key=server.keys.secret_access_key,
        region="us-east-1",
        client_options={"allow_http": True},
    )
    start = time.perf_counter()
    with src.open("rb") as f:
        await obstore.put_async(store, key, f, chunk_size=PART, max_concurrency=4)
    up = time.perf_counter() - start
    start = time.perf_counter()
    r = await obstore.get_async(store, key)
    with out.open("wb") as f:
        async for chunk in r.stream(1 << 20):
            f.write(chunk)
    return up, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=96, help="MiB")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cosmos-s3-clients-") as d:
        tmp = Path(d)
        with seaweed.standalone(tmp) as server:
            src = tmp / "src.bin"
            src.write_bytes(os.urandom(args.size * 1024 * 1024))
            times: dict[str, list[tuple[float, float]]] = {"obstore": [], "aiobotocore": []}

            async def rounds() -> None:
                for r in range(args.rounds):
                    order = ["obstore", "aiobotocore"] if r % 2 == 0 else ["aiobotocore", "obstore"]
                    for who in order:
                        fn = obstore_round if who == "obstore" else boto_round
                        times[who].append(await fn(server, src, f"bench/{who}-{r}", tmp / "out.bin"))

            asyncio.run(rounds())
    mb = args.size * 1024 * 1024 / 1e6
    rate = {
        who: (mb / statistics.median(u for u, _ in t), mb / statistics.median(d for _, d in t))
        for who, t in times.items()
    }
    for who, (up, down) in rate.items():
        print(f"{who:>12}: upload {up:6.1f} MB/s   download {down:6.1f} MB/s")
    o, b = rate["obstore"], rate["aiobotocore"]
    print(f"obstore/aiobotocore: upload x{o[0] / b[0]:.2f}, download x{o[1] / b[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
