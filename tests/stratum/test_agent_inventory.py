"""Declared GPU inventories (``--gpus``), as tests and the simulator use them."""

from __future__ import annotations

import pytest

from cosmos import errors
from cosmos.stratum.agent import inventory

pytestmark = pytest.mark.unit


def test_declared_gpus_expand_counts_models_and_memory() -> None:
    gpus = inventory.parse_declared_gpus("2xA100:80G, T4:16G,1xH100", "host-a")
    assert [(g.index, g.model, g.memory_bytes) for g in gpus] == [
        (0, "A100", 80 << 30),
        (1, "A100", 80 << 30),
        (2, "T4", 16 << 30),
        (3, "H100", 0),
    ]
    assert len({g.uuid for g in gpus}) == 4
    assert all("host-a" in g.uuid for g in gpus)


@pytest.mark.parametrize("text", ["2x", "x A100", "2xA100:80X", "A100:"])
def test_malformed_declarations_are_refused_with_the_offending_part(text: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        inventory.parse_declared_gpus(text, "h")
    assert "--gpus" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "model"),
    [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA A100-SXM4-40GB", "A100"), ("Tesla T4", "T4")],
)
def test_nvml_names_shorten_to_the_model_token(name: str, model: str) -> None:
    assert inventory.short_model(name) == model


@pytest.mark.integration  # out of process (a port, a process or a connection)
def test_collect_without_declaration_reports_this_host() -> None:
    inv = inventory.collect("h")
    assert inv.cpu_millis >= 1000
    assert inv.memory_bytes > 0
    assert "process" in inv.runtimes


def test_runtimes_offers_only_what_is_allowed_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "_engine_answers", lambda name: name == "podman")
    assert inventory.runtimes() == ["process", "podman"]
    assert inventory.runtimes("process") == ["process"]
    assert inventory.runtimes("process,docker") == ["process"]  # docker does not answer here
    with pytest.raises(errors.ConfigError, match="unknown lxc"):
        inventory.runtimes("process,lxc")
