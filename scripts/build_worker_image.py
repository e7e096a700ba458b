"""Build the worker image, ``localhost/cosmos-worker:<version>``, locally (``make image``).

No registry is assumed reachable, so nothing is pulled. Two layers, so that a source change rebuilds
only the thin one:

- **base** (``localhost/cosmos-worker-base:<hash>``): a minimal Debian root filesystem from
  ``mmdebstrap --variant=minbase`` with ``python3`` and the third-party dependencies of the
  distributions chunk jobs run, installed under ``/usr/local`` (``imageio-ffmpeg`` brings a static
  ffmpeg, linked as ``/usr/local/bin/ffmpeg``), imported with ``podman import``. Its hash covers the
  pinned requirements, this script and the Debian suite (~40 s to build).
- **app**: the wheels of those distributions (Optimus's, for ``python3 -m cosmos.optimus.media``,
  the runtime's and the contracts'), byte-compiled here, copied onto the base with ``podman build``
  (a few seconds).

Cached: the image is also tagged ``<version>-<source hash>`` (the hash covers the installed sources,
the ``pyproject.toml`` files, this script and the Debian suite); when that tag exists, nothing is built.

    python scripts/build_worker_image.py [--tag localhost/cosmos-worker] [--suite bookworm] [--force]

Prints the image reference on stdout; progress and timings go to stderr. Exit code 2: podman or
mmdebstrap is missing (``make install`` installs them as root on Debian).
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import hashlib
import os
import py_compile
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
BASE_SUFFIX = "-base"
"""The base layer's repository is the image's with this suffix (``localhost/cosmos-worker-base``)."""
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


def third_party_requirements() -> list[str]:
    """The pinned requirements of the image's distributions, the distributions themselves left out
    (they are the app layer)."""
    own = set()
    requirements: set[str] = set()
    for root in ROOTS:
        with (ROOT / root / "pyproject.toml").open("rb") as f:
            project = tomllib.load(f)["project"]
        own.add(project["name"])
        requirements.update(project["dependencies"])
    return sorted(r for r in requirements if r.split("==")[0].strip() not in own)


def base_hash(suite: str) -> str:
    """A digest of what the base layer is built from: the requirements, this script, the suite."""
    digest = hashlib.sha256(suite.encode())
    digest.update("\n".join(third_party_requirements()).encode())
    digest.update(Path(__file__).read_bytes())
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
    base = f"{repo}{BASE_SUFFIX}:{base_hash(suite)}"
    if force or not image_exists(podman, base):
        _build_base(podman, mmdebstrap, base, suite)
    _build_app(podman, base, cached, ver)
    _run([podman, "tag", cached, final], "tag")
    print(f"built {cached} in {time.monotonic() - started:.0f}s; tagged {final}", file=sys.stderr)
    prune(podman, repo, keep=cached)
    prune(podman, f"{repo}{BASE_SUFFIX}", keep=base)  # after the images built on the old bases
    return final


def _build_base(podman: str, mmdebstrap: str, base: str, suite: str) -> None:
    """Debian minbase, python3 and the third-party dependencies (ffmpeg among them), imported."""
    with tempfile.TemporaryDirectory(prefix="cosmos-image-") as tmp:
        work = Path(tmp)
        site = work / "site"
        # Same interpreter version as bookworm's python3 (3.11), so the binary wheels fit it.
        _run(
            [*PIP, "install", "--quiet", "--no-compile", "--target", str(site), *third_party_requirements()],
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
                str(rootfs),
                base,
            ],
            "podman import (base)",
        )


def _build_app(podman: str, base: str, image: str, ver: str) -> None:
    """The distributions' wheels on top of ``base``, byte-compiled here (the image is read-only when
    jobs run; hash-checked .pyc files, as copying need not keep the sources' times)."""
    if sys.version_info[:2] != (3, 11):
        raise BuildError(f"needs Python 3.11, bookworm's python3 (this is {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory(prefix="cosmos-image-") as tmp:
        work, context = Path(tmp), Path(tmp) / "context"
        wheels, site = work / "wheels", context / "site"
        # The distributions' wheels, built offline with the backend already in the virtual environment.
        _run(
            [*PIP, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels),
             *(str(ROOT / root) for root in ROOTS)],
            "wheels",
        )  # fmt: skip
        _run(
            [*PIP, "install", "--quiet", "--no-deps", "--no-compile", "--target", str(site),
             *map(str, wheels.iterdir())],
            "install the wheels",
        )  # fmt: skip
        compiled = compileall.compile_dir(
            site,
            ddir=PYTHON_SITE,
            quiet=2,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
        if not compiled:
            raise BuildError(f"byte-compiling the wheels in {site} failed")
        (context / "Containerfile").write_text(
            f"FROM {base}\n"
            f"COPY site/ {PYTHON_SITE}/\n"
            f"LABEL org.opencontainers.image.version={ver} cosmos.source-hash={image.rsplit('-', 1)[1]}\n"
        )
        _run([podman, "build", "--quiet", "--pull=never", "-t", image, str(context)], "podman build (app)")


def prune(podman: str, repo: str, keep: str) -> None:
    """Remove this repository's other hash tags (``<hash>`` or ``<version>-<hash>``): every source
    change makes one, and a base is a whole root filesystem (~500 MB). An image a container or a
    newer image still uses stays (podman refuses; ignored)."""
    listed = subprocess.run(
        [podman, "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repo}"],
        capture_output=True,
        text=True,
        check=False,
    )
    old = [ref for ref in listed.stdout.split() if ref != keep and _hash_tag(ref.rsplit(":", 1)[-1])]
    if old:
        subprocess.run([podman, "rmi", *old], capture_output=True, check=False)
        print(f"  removed older images: {' '.join(old)}", file=sys.stderr)


def _hash_tag(tag: str) -> bool:
    digest = tag.rsplit("-", 1)[-1]
    return len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)


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
