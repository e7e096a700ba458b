"""The README's SDK example, run as written (only the NATS address and the certificate's place
changed), completes the README's card workflow started with the README's input."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import security_harness
import yaml
from plato_harness import PlatoClient

from cosmos.plato.v1 import workflow_pb2

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


async def test_the_readme_worker_completes_the_card_workflow(plato: PlatoClient, tmp_path: Path) -> None:
    card = next(b for b in blocks("yaml") if "encode-workflow-v3" in b)
    example = next(b for b in blocks("python") if "@worker.handler" in b and "mux-final" in b)
    definition = yaml.safe_load(card)["workflow"]
    steps = {s for rule in definition["rules"] for s in rule.get("do", []) if isinstance(s, str)}
    steps |= {
        rule["do"][0]["fanout"]["run"] for rule in definition["rules"] if "fanout" in str(rule.get("do"))
    }
    steps |= {s for rule in definition["rules"] for s in rule.get("onExhausted", [])}
    for step in steps:  # a handler for every step the card names
        assert f'@worker.handler("{step}")' in example, step
    tls = security_harness.worker_tls()
    example = example.replace('"nats://127.0.0.1:4222"', repr(plato.nats_url))
    example = example.replace(
        'TlsFiles.in_dir(Path(".cosmos/pki"), "worker")',
        f"TlsFiles.in_dir(Path({str(tls.ca.parent)!r}), {tls.cert.stem!r})",
    )
    script = tmp_path / "worker.py"
    script.write_text(example)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=out, stderr=out)
    try:
        assert await plato.register(card) >= 1
        wf_id = await plato.start(
            "encode-workflow-v3", {"sourceUri": "file:///in.mp4", "profiles": ["1080p", "720p"]}
        )
        try:
            wf = await plato.wait(wf_id, timeout=60)
        except TimeoutError:
            raise AssertionError(f"{await plato.get(wf_id)}\nworker: {log.read_text()}") from None
        assert wf.state == workflow_pb2.WORKFLOW_STATE_COMPLETED, wf
        assert {s.step_name for s in wf.steps} == {
            "probe-source",
            "encode-segment",
            "mux-final",
            "publish-manifest",
        }
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
