"""``vault completion bash|zsh``: a completion script built from the parser itself, so it
never falls behind the commands. zsh runs the bash one through ``bashcompinit``."""

import argparse

BASH = """_vault() {
    local cur=${COMP_WORDS[COMP_CWORD]} command=${COMP_WORDS[1]}
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "%(commands)s --help --version" -- "$cur"))
        return
    fi
    local options
    case $command in
%(cases)s
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -o default -F _vault vault
"""
ZSH_PREFIX = "autoload -U +X bashcompinit && bashcompinit\n"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = subcommands(parser)
    cases = []
    for name, sub in commands.items():
        options = sorted(option for action in sub._actions for option in action.option_strings)
        cases.append(f'        {name}) options="{" ".join(options)}" ;;')
    text = BASH % {"commands": " ".join(commands), "cases": "\n".join(cases)}
    return ZSH_PREFIX + text if shell == "zsh" else text
