"""``cosmos completion bash|zsh``: a shell completion script built from the commands' own parsers.

bash: ``source <(cosmos completion bash)`` (or save it under ``/etc/bash_completion.d/cosmos``);
zsh: ``source <(cosmos completion zsh)`` (bash completion through zsh's ``bashcompinit``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cosmos.cli import config as config_cli
from cosmos.cli import encode, platform, up
from cosmos.cli.main import COMMANDS
from cosmos.runtime import process


def words_of(p: argparse.ArgumentParser) -> list[str]:
    """What may follow a command: its positional choices (verbs) and its flags."""
    words: list[str] = []
    for action in p._actions:
        if action.option_strings:
            words.extend(
                s for s in action.option_strings if s.startswith("--") or len(action.option_strings) == 1
            )
        elif action.choices:
            words.extend(str(c) for c in action.choices)
    return words


def table() -> dict[str, list[str]]:
    """Completion words per command."""
    words = {noun: words_of(platform.parser(noun)) for noun in platform.VERBS}
    words["agents"].insert(0, "join-token")
    words["encode"] = ["watch", *words_of(encode.parser())]
    stack = argparse.ArgumentParser(add_help=True)
    up.add_stack_arguments(stack)
    words["up"] = words_of(stack)
    words["completion"] = ["bash", "zsh"]
    words["config"] = words_of(config_cli.parser())
    return words


def bash_script() -> str:
    commands = " ".join(COMMANDS)
    cases = "\n".join(f'        {name}) words="{" ".join(w)}" ;;' for name, w in table().items())
    return f"""# cosmos completion (bash): source <(cosmos completion bash)
_cosmos() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" words=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{commands} --version --help" -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -o bashdefault -F _cosmos cosmos
"""


def zsh_script() -> str:
    return (
        "# cosmos completion (zsh): source <(cosmos completion zsh)\n"
        "autoload -U +X compinit && compinit\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash_script().split("\n", 1)[1]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos completion``."""
    p = argparse.ArgumentParser(prog="cosmos completion", description="Print a shell completion script.")
    p.add_argument("shell", choices=["bash", "zsh"])
    args = p.parse_args(argv)
    print(bash_script() if args.shell == "bash" else zsh_script(), end="")
    return process.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
