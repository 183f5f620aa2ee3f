"""The command line of ``run.py``: the server's flags and the ``admin`` commands, in one parser
so that ``--config`` and ``--data-dir`` mean the same for both and ``--help`` lists everything."""

import argparse
from pathlib import Path

from vault import __version__
from vault.units import parse_duration, parse_size

ADMIN = "admin"


def size_arg(text: str) -> int | None:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _place_flags(parser: argparse.ArgumentParser, default_config: Path | None) -> None:
    """--config and --data-dir, before or after ``admin``. Given after, they win; the defaults
    are set once, on the top level (SUPPRESS keeps the admin parser from resetting them)."""
    default = argparse.SUPPRESS if default_config is None else default_config
    data_dir = argparse.SUPPRESS if default_config is None else None
    parser.add_argument(
        "--config", type=Path, default=default, help="YAML settings file (default: config.yaml beside run.py)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=data_dir,
        help="database and secrets (default: data_dir from the config, relative to its folder)",
    )


def _user_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, text in (("create-user", "create an account"), ("reset-password", "set a new password")):
        sub = commands.add_parser(name, help=f"{text} (the password is asked for, or read from stdin)")
        sub.add_argument("username")
    commands.add_parser(
        "list-users", help="every account: created, files, usage, quota, disabled, last login"
    )
    commands.add_parser("show", help="a user's usage and limits").add_argument("username")
    limits = commands.add_parser(
        "set-limits", help="set a user's quota and largest file ('none': the default)"
    )
    limits.add_argument("username")
    limits.add_argument("--quota", type=size_arg, help="bytes the user may store, e.g. 50G, or none")
    limits.add_argument("--max-file-size", type=size_arg, help="largest file, e.g. 4G, or none")
    invite = commands.add_parser("invite", help="print a single-use invite code for POST /register")
    invite.add_argument(
        "--ttl", type=duration_arg, help="how long it is valid: 3600, 12h, 7d (default: invite_ttl)"
    )
    for name, text in (
        ("disable-user", "refuse a user's logins and end every session at once (files are kept)"),
        ("enable-user", "let a disabled user log in again"),
    ):
        commands.add_parser(name, help=text).add_argument("username")
    delete = commands.add_parser(
        "delete-user", help="remove an account with its files, shares, links and tokens"
    )
    delete.add_argument("username")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _data_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    commands.add_parser("verify", help="check every file's MACs offline; list the damaged ones")
    commands.add_parser("audit-verify", help="check the audit log's chain; name the first broken entry")
    commands.add_parser("rotate-key", help="new primary master key; re-wrap every file key (server stopped)")
    retire = commands.add_parser("retire-key", help="drop an old master key nothing uses (server stopped)")
    retire.add_argument("key_id", type=int)
    backup = commands.add_parser(
        "backup", help="consistent copy of the database into a new directory, then verified"
    )
    backup.add_argument("dest", type=Path)
    backup.add_argument("--with-keys", action="store_true", help="copy master.keys and jwt.secret beside it")
    commands.add_parser(
        "compact", help="give the space of deleted files back to the file system (server stopped)"
    )
    gc = commands.add_parser(
        "gc",
        help="purge deleted files and, with blob_store: s3, delete orphan objects; report what was found",
    )
    gc.add_argument(
        "--lease",
        type=duration_arg,
        help="keep orphan objects younger than this: 600, 1h (default: s3_gc_lease;"
        " 0 only with the server stopped)",
    )
    migrate = commands.add_parser(
        "migrate",
        help="copy the vault to the other metadata store (--to), or move the segments between the"
        " database and the bucket (--blobs); server stopped",
    )
    migrate.add_argument(
        "--to",
        choices=("sqlite", "postgres"),
        required=True,
        help="the metadata store afterwards (postgres: at VAULT_DATABASE_URL; sqlite: data_dir's vault.db)",
    )
    migrate.add_argument(
        "--blobs", choices=("database", "s3"), help="where the segments go (default: where they are)"
    )
    export = commands.add_parser("export", help="write a file, decrypted and verified, to stdout or -o FILE")
    export.add_argument("username")
    export.add_argument("filename")
    export.add_argument("-o", "--output", type=Path, help="write here (nothing is left behind on error)")


def build_parser(default_config: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="vault: encrypted file sharing over HTTPS. Without a command: run the server.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vault {__version__}")
    _place_flags(parser, default_config)
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port for HTTPS, 0 for any free one (default 5000)")
    modes = parser.add_subparsers(dest="mode", metavar="admin")
    admin = modes.add_parser(
        ADMIN, help="administration, offline or beside a running server (run.py admin COMMAND --help)"
    )
    _place_flags(admin, None)
    admin.add_argument(
        "--init", action="store_true", help="create the data directory (new keys) if it does not exist"
    )
    commands = admin.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _user_commands(commands)
    _data_commands(commands)
    listing = "\n".join(f"  {a.dest:<16}{a.help}" for a in commands._choices_actions)
    parser.epilog = (
        f"admin commands (run.py admin COMMAND --help):\n{listing}\n\n"
        "Every setting (README, Configuration) can also come from config.yaml or a VAULT_<KEY>"
        " environment variable; flags win over both."
    )
    return parser


def parse(argv: list[str], default_config: Path) -> argparse.Namespace:
    args = build_parser(default_config).parse_args(argv)
    args.given = [
        name for flag, name in (("--quota", "quota"), ("--max-file-size", "max_file_size")) if flag in argv
    ]
    return args
