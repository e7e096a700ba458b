"""The README's SDK example, run as written (only the NATS address and the certificate's place
changed), completes the README's card workflow started with the README's input."""

from __future__ import annotations

from pathlib import Path

from plato_harness import PlatoClient, run_readme_worker


async def test_the_readme_worker_completes_the_card_workflow(plato: PlatoClient, tmp_path: Path) -> None:
    await run_readme_worker(plato, tmp_path)
