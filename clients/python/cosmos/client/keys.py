"""The seed card's idempotency key for encodes: ``sha256(source + profiles)``.

``cosmos encode`` (and any program) sends it as the encode's ``request_id`` when the caller gives
none, so submitting the same encode twice, from anywhere, names one encode: the second submit
returns the first (``deduplicated``), a ``--retry`` resumes it. The output location, ladder, quality
mode and overwrite flag are hashed too: the same source and profiles published elsewhere (or
measured differently) is another encode, and Optimus refuses one request id reused for a different
request (``REQUEST_ID_REUSED``), so leaving them out would turn a legitimate second encode into an
error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

PREFIX = "encode-"


def encode_request_id(
    source_uri: str,
    profiles: Iterable[str],
    *,
    output_uri: str = "",
    ladder: str = "",
    quality: str = "",
    overwrite: bool = False,
    image: str = "",
) -> str:
    """``encode-<sha256 hex>`` of the encode's identity. Profiles are a set (order and repeats do
    not change the ladder Optimus encodes), so ``720p,1080p`` and ``1080p,720p`` are one encode."""
    identity = {
        "source": source_uri,
        "profiles": sorted(set(profiles)),
        "output": output_uri,
        "ladder": ladder,
        "quality": quality,
        "overwrite": overwrite,
    }
    if image:  # chunks encoded in a container image (keys of encodes without one are unchanged)
        identity["image"] = image
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return PREFIX + hashlib.sha256(canonical.encode()).hexdigest()
