"""The command lines ``cosmos up`` gives its children, checked against each program's own parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from cosmos.console import server as console_server
from cosmos.optimus import server as optimus_server
from cosmos.plato import server as plato_server
from cosmos.stack.components import Components
from cosmos.stack.stack_config import StackConfig
from cosmos.stratum import server as stratum_server
from cosmos.stratum.agent import main as agent_main

pytestmark = pytest.mark.unit

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "optimus": optimus_server.parser,
    "plato": plato_server.parser,
    "stratum": stratum_server.parser,
    "console": console_server.parser,
    "agent": agent_main.parser,
}


def test_every_child_runs_at_the_stacks_log_level(tmp_path: Path) -> None:
    """``cosmos up --log-level`` reaches every service, the console and the agent (it once set a
    variable no service reads, so they all logged at info)."""
    components = Components(StackConfig(data_dir=tmp_path, log_level="warning", insecure=True))
    children = [
        *(components.service(name, 50000 + n) for n, name in enumerate(("optimus", "plato", "stratum"))),
        components.console(),
        components.agent(),
    ]
    for child in children:
        program = child.argv[3]  # python -m cosmos.cli <program> ...
        args, _ = PARSERS[program]().parse_known_args(list(child.argv[4:]))
        assert args.log_level == "warning", (program, child.argv)
