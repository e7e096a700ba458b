"""Build the worker image, ``localhost/cosmos-worker:<version>``, locally (``make image``).

No registry is assumed reachable, so nothing is pulled: a minimal Debian root filesystem from
``mmdebstrap --variant=minbase`` with ``python3``, the wheels of the distributions chunk jobs run
(Optimus's, for ``python3 -m cosmos.optimus.media``, the runtime's and the contracts') and their
dependencies installed under ``/usr/local`` (``imageio-ffmpeg`` brings a static ffmpeg, linked as
``/usr/local/bin/ffmpeg``), imported with ``podman import``.

Cached: the image is also tagged ``<version>-<source hash>`` (the hash covers the installed sources,
the ``pyproject.toml`` files, this script and the Debian suite); when that tag exists, nothing is built.

    python scripts/build_worker_image.py [--tag localhost/cosmos-worker] [--suite bookworm] [--force]

Prints the image reference on stdout; progress and timings go to stderr. Exit code 2: podman or
mmdebstrap is missing (``make install`` installs them as root on Debian).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / ".cosmos" / "worker-image.lock"
DEFAULT_REPO = "localhost/cosmos-worker"
ROOTS = ("protos/gen", "services/runtime", "services/optimus")
"""The roots of the distributions the image holds (docs/architecture.md, "Distributions")."""
SOURCES = ("pyproject.toml", *ROOTS, "scripts/build_worker_image.py")
"""What goes into the wheels (and this recipe, and the version): a change here means a new image."""
PYTHON_SITE = "/usr/local/lib/python3.11/dist-packages"
"""Where Debian bookworm's python3 looks for locally installed packages."""
PIP = (sys.executable, "-m", "pip")
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


class BuildError(Exception):
    """The image cannot be built; the message says what is missing or what failed."""


def version() -> str:
    """The project's version, from ``pyproject.toml``."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def source_files() -> list[Path]:
    """The files the image is built from, in a stable order (caches and bytecode left out)."""
    files: list[Path] = []
    for entry in SOURCES:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".mypy_cache"))
            files.extend(Path(dirpath) / name for name in sorted(filenames) if not name.endswith(".pyc"))
    return files


def source_hash(suite: str) -> str:
    """A digest of the sources, their paths and the Debian suite: the image's cache key."""
    digest = hashlib.sha256(suite.encode())
    for path in source_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise BuildError(f"{what} failed (exit {done.returncode}): {shlex.join(argv)}\n{tail}")
    print(f"  {what}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return done


def image_exists(podman: str, ref: str) -> bool:
    """Whether ``ref`` is in the local image store."""
    return subprocess.run([podman, "image", "exists", ref], check=False).returncode == 0


def build(repo: str, suite: str, force: bool) -> str:
    """Build (or find cached) the worker image; returns ``<repo>:<version>``."""
    podman = shutil.which("podman")
    mmdebstrap = shutil.which("mmdebstrap")
    if podman is None or mmdebstrap is None:
        missing = " and ".join(n for n, p in (("podman", podman), ("mmdebstrap", mmdebstrap)) if p is None)
        raise BuildError(f"{missing} not installed (as root on Debian: make install)")
    # One build at a time (test workers ask for the image together): the second finds it cached.
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(podman, mmdebstrap, repo, suite, force)


def _build(podman: str, mmdebstrap: str, repo: str, suite: str, force: bool) -> str:
    ver = version()
    cached = f"{repo}:{ver}-{source_hash(suite)}"
    final = f"{repo}:{ver}"
    if not force and image_exists(podman, cached):
        _run([podman, "tag", cached, final], "tag")
        print(f"{cached} is current; tagged {final}", file=sys.stderr)
        return final
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cosmos-image-") as tmp:
        work = Path(tmp)
        wheels, site = work / "wheels", work / "site"
        # The distributions' wheels, built offline with the backend already in the virtual environment.
        _run(
            [*PIP, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels),
             *(str(ROOT / root) for root in ROOTS)],
            "wheels",
        )  # fmt: skip
        # Same interpreter version as bookworm's python3 (3.11), so the binary wheels fit it. All the
        # wheels in one command: the distributions' names for each other resolve to them.
        _run(
            [*PIP, "install", "--quiet", "--no-compile", "--target", str(site), *map(str, wheels.iterdir())],
            "dependencies",
        )
        ffmpeg = next((site / "imageio_ffmpeg" / "binaries").glob("ffmpeg-*"))
        hook = (
            f'cp -a {shlex.quote(str(site))}/. "$1{PYTHON_SITE}/" && '
            f'ln -s {PYTHON_SITE}/imageio_ffmpeg/binaries/{ffmpeg.name} "$1/usr/local/bin/ffmpeg" && '
            # Byte-compile once at build time: the root filesystem is read-only when jobs run.
            f'chroot "$1" python3 -m compileall -q -j 0 {PYTHON_SITE} >/dev/null || true'
        )
        rootfs = work / "rootfs.tar"
        _run(
            [
                mmdebstrap,
                "--variant=minbase",
                "--include=python3,ca-certificates",
                "--quiet",
                *(f"--dpkgopt=path-exclude={p}" for p in EXCLUDES),
                f'--customize-hook=mkdir -p "$1{PYTHON_SITE}" && {hook}',
                '--customize-hook=rm -rf "$1/var/cache/apt"/* "$1/var/lib/apt/lists"/*',
                suite,
                str(rootfs),
            ],
            "debian root filesystem (mmdebstrap)",
        )
        _run(
            [
                podman,
                "import",
                "--quiet",
                *("--change", "WORKDIR /work", "--change", "USER 65534:65534"),
                *("--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin", "--change", 'CMD ["python3"]'),
                *("--change", f"LABEL org.opencontainers.image.version={ver}"),
                *("--change", f"LABEL cosmos.source-hash={cached.rsplit('-', 1)[1]}"),
                str(rootfs),
                cached,
            ],
            "podman import",
        )
    _run([podman, "tag", cached, final], "tag")
    print(f"built {cached} in {time.monotonic() - started:.0f}s; tagged {final}", file=sys.stderr)
    prune(podman, repo, keep=cached)
    return final


def prune(podman: str, repo: str, keep: str) -> None:
    """Remove this repository's older source-hash tags: each is a whole image (~500 MB), and every
    source change makes one. An image a container still uses stays (podman refuses; ignored)."""
    listed = subprocess.run(
        [podman, "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repo}"],
        capture_output=True,
        text=True,
        check=False,
    )
    old = [ref for ref in listed.stdout.split() if ref != keep and ref.rsplit(":", 1)[-1].count("-") == 1]
    if old:
        subprocess.run([podman, "rmi", *old], capture_output=True, check=False)
        print(f"  removed older images: {' '.join(old)}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=DEFAULT_REPO, help="image name without tag")
    parser.add_argument("--suite", default="bookworm", help="Debian suite of the root filesystem")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached tag exists")
    args = parser.parse_args()
    try:
        print(build(args.repo, args.suite, args.force))
    except BuildError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 2 if "not installed" in str(exc) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
