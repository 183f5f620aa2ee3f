"""``vault``: the command line. Each command is a small function over a ``Session``."""

import argparse
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from vaultcli import completion, download, upload
from vaultcli.client import (
    Session,
    make_http,
    path_of,
    server_message,
    tls_context,
    transport_message,
    version,
)
from vaultcli.config import Credentials, Store
from vaultcli.errors import EXIT_INTERRUPTED, CliError, LoginNeeded, UsageError
from vaultcli.fetch import FetchError
from vaultcli.progress import Progress

EXIT_CODES = """exit status:
  0    success
  1    error (the server's message, or what failed, is printed on stderr in one line)
  2    usage error (bad command line)
  3    integrity failure: a SHA-256 differs from what the server reported (nothing is deleted)
  130  interrupted (Ctrl-C); run the same put or get again to resume

environment:
  VAULT_URL        server for `vault login` when no URL is given
  VAULT_USER, VAULT_PASSWORD   credentials for `vault login` in scripts
  VAULT_LINK_PASSWORD          password for a public link (`vault get URL`, `vault link --password`)
  VAULT_CACERT     CA certificate (PEM) to trust, e.g. a self-signed server's certs/cert.pem
  VAULT_CONFIG_DIR where the session and transfer state live (default: your config/state dirs)
  HTTPS_PROXY, NO_PROXY ...    proxies, as usual
"""

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 1}


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``512K`` or bytes (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64M)")
    value = int(match.group(1)) << (10 * " kmgt".index(match.group(2).lower() or " "))
    if value <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return value


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``12h``, ``1d``, ``2w`` or seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 1d or 12h)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # unreachable


def say(args: argparse.Namespace, text: str) -> None:
    """A result line on stdout (not with --quiet or --json)."""
    if not args.quiet and not args.json:
        print(text, flush=True)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str] | None = None) -> None:
    if args.json:
        print(json.dumps(data, indent=1, ensure_ascii=False), flush=True)
    elif text is not None and not args.quiet:
        print(text(), flush=True)


def read_secret(prompt: str, env: str) -> str:
    """From the environment, a terminal prompt, or one line of standard input (scripts)."""
    if env in os.environ:
        return os.environ[env]
    if sys.stdin.isatty():
        return getpass.getpass(prompt, stream=sys.stderr)
    line = sys.stdin.readline()
    if not line:
        raise UsageError(f"no password: give it on standard input or in {env}")
    return line.rstrip("\r\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


# -- commands ---------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace, store: Store) -> None:
    old = store.load_credentials()
    url = args.url or os.environ.get("VAULT_URL") or (old.url if old else None)
    if not url:
        raise UsageError("which server? vault login https://vault.example.org")
    url = url.rstrip("/")
    if urlsplit(url).scheme != "https":
        raise UsageError(f"{url}: the server URL must start with https://")
    user = args.username or os.environ.get("VAULT_USER")
    if not user:
        if not sys.stdin.isatty():
            raise UsageError("no user name: give --username or VAULT_USER")
        print("User: ", end="", file=sys.stderr, flush=True)
        user = sys.stdin.readline().strip()
    password = read_secret("Password: ", "VAULT_PASSWORD")
    cacert = args.cacert or os.environ.get("VAULT_CACERT")
    cacert = os.path.abspath(cacert) if cacert else None
    http = make_http(url, tls_context(cacert))
    try:
        response = http.post("/login", json={"username": user, "password": password})
    except httpx.TransportError as exc:
        raise CliError(transport_message(url, exc)) from None
    finally:
        http.close()
    if response.status_code != 200:
        raise CliError(f"login failed: {server_message(response)}")
    pair = response.json()
    if old is not None:
        _end_session(store, args)
    with store.locked():
        store.save_credentials(
            Credentials(
                url=url,
                username=user,
                refresh_token=pair["refresh_token"],
                cacert=cacert,
                access_token=pair["token"],
                access_expires=time.time() + float(pair["expires_in"]),
            )
        )
    emit(args, {"url": url, "username": user}, lambda: f"Logged in to {url} as {user}.")


def _end_session(store: Store, args: argparse.Namespace) -> bool:
    """Ends the stored session on the server (best effort); True if the server confirmed."""
    try:
        session = Session.open(store, args.cacert)
        try:
            response = session.request("POST", "/logout", json={"refresh_token": session.creds.refresh_token})
            return response.status_code == 200
        finally:
            session.close()
    except CliError:
        return False


def cmd_logout(args: argparse.Namespace, store: Store) -> None:
    creds = store.load_credentials()
    if creds is None:
        say(args, "Not logged in.")
        return
    confirmed = _end_session(store, args)
    store.forget_credentials()
    note = "" if confirmed else " (the server could not be told; the session ends when its tokens expire)"
    emit(
        args, {"logged_out": True, "server_confirmed": confirmed}, lambda: f"Logged out of {creds.url}.{note}"
    )


def cmd_whoami(args: argparse.Namespace, session: Session) -> None:
    me = session.json("GET", "/me")
    quota = me.get("quota")
    used = human(me["usage"]) + (f" of {human(quota)} ({100 * me['usage'] / quota:.1f}%)" if quota else "")
    emit(
        args,
        {"url": session.url, **me},
        lambda: (
            f"{me['username']} on {session.url}\n"
            f"{me['files']} file{'' if me['files'] == 1 else 's'}, "
            f"{used} used{'' if quota else ' (no quota)'}, "
            f"largest file allowed {human(me['max_file_size'])}"
        ),
    )


def check_usage(args: argparse.Namespace) -> None:
    """What argparse cannot say, checked before anything else happens."""
    files = args.files if args.command == "put" else [args.file] if args.command == "send" else []
    if args.command == "put" and args.name and len(files) > 1:
        raise UsageError("--name needs exactly one FILE")
    if "-" in files and (len(files) > 1 or not args.name):
        raise UsageError("standard input (-) goes alone and needs --name")
    if args.command == "get" and args.shared and "/" not in args.target:
        raise UsageError("--shared takes OWNER/NAME")


def cmd_put(args: argparse.Namespace, session: Session) -> None:
    results = [o.as_json() for o in put_files(args, session, args.files)]
    emit(
        args,
        results,
        lambda: "\n".join(f"{r['filename']}  {human(r['size'])}  sha256:{r['sha256']}" for r in results),
    )


def put_files(args: argparse.Namespace, session: Session, files: list[str]) -> list[upload.Outcome]:
    sizes = [0 if f == "-" else _file_size(f) for f in files]
    progress = Progress(args.quiet, total=sum(sizes), files=len(files))
    try:
        if files == ["-"]:
            return [upload.put_stdin(session, args.name, progress)]
        return [
            upload.TusUpload(session, f, args.name or os.path.basename(f), args.chunk_size, progress).run()
            for f in files
        ]
    finally:
        progress.close()


def _file_size(path: str) -> int:
    try:
        if not os.path.isfile(path):
            raise CliError(f"{path}: not a regular file")
        return os.path.getsize(path)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None


def cmd_get(args: argparse.Namespace, session: Session | None, store: Store) -> None:
    target = args.target
    if target.startswith("https://") or target.startswith("http://"):
        source, name = _link_source(args, target)
    else:
        if session is None:
            raise LoginNeeded("not logged in: run `vault login URL` first")
        if args.shared:
            owner, _, name = target.partition("/")
            if not owner or not name:
                raise UsageError("--shared takes OWNER/NAME")
            path = f"/shared/{path_of(owner)}/{path_of(name)}"
        else:
            name, path = target, "/download/" + path_of(target)
        source = download.Source(session.http, session.tls, path, f"{session.url}{path}", session=session)
    progress = Progress(args.quiet)
    try:
        if args.output == "-":
            result = download.to_stdout(source, progress)
        else:
            dest = args.output or name
            if args.output is None and os.path.exists(dest):
                raise CliError(f"{dest} already exists: remove it or choose another name with -o")
            result = download.Download(source, dest, progress).run()
    except (httpx.TransportError, FetchError) as exc:
        raise CliError(transport_message(str(source.http.base_url), exc)) from None
    finally:
        progress.close()
    if args.output != "-":  # stdout carries the file itself
        emit(args, result, lambda: f"{result['path']}  {human(result['size'])}  sha256:{result['sha256']}")


def _link_source(args: argparse.Namespace, url: str) -> tuple[download.Source, str]:
    """A public link: no account. A HEAD (free of charge) names the file and asks for a
    password if the link has one."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    creds = Store().load_credentials()
    same_server = creds is not None and creds.url.rstrip("/") == origin
    cacert = (
        args.cacert or os.environ.get("VAULT_CACERT") or (creds.cacert if same_server and creds else None)
    )
    tls = tls_context(cacert)
    http = make_http(origin, tls)
    password = None
    response = http.head(parts.path)
    if response.status_code == 401:
        password = read_secret("Link password: ", "VAULT_LINK_PASSWORD")
        response = http.head(parts.path, auth=httpx.BasicAuth("", password))
    if response.status_code != 200:
        raise CliError(_head_message(http, parts.path, response, password))
    name = download.disposition_name(response.headers.get("Content-Disposition", "")) or "download"
    return download.Source(http, tls, parts.path, url, password=password), name


def _head_message(http: httpx.Client, path: str, response: httpx.Response, password: str | None) -> str:
    """A HEAD answer has no body: ask with a GET for the message (an error costs nothing)."""
    auth = httpx.BasicAuth("", password) if password is not None else None
    with http.stream("GET", path, auth=auth) as again:
        return server_message(again) if again.status_code >= 400 else server_message(response)


def cmd_ls(args: argparse.Namespace, session: Session) -> None:
    files = session.json("GET", "/files")["files"]
    rows = [[f["filename"], human(f["size"]), f["created"] or ""] for f in files]
    emit(args, files, lambda: table(rows, ["NAME", "SIZE", "CREATED"]) if rows else "No files.")


def cmd_rm(args: argparse.Namespace, session: Session) -> None:
    for name in args.names:
        session.json("DELETE", "/files/" + path_of(name))
        say(args, f"Deleted {name}.")


def cmd_share(args: argparse.Namespace, session: Session) -> None:
    reply = session.json("POST", f"/files/{path_of(args.name)}/shares", 201, json={"username": args.user})
    emit(args, reply, lambda: f"Shared {reply['filename']} with {reply['username']}.")


def cmd_unshare(args: argparse.Namespace, session: Session) -> None:
    reply = session.json("DELETE", f"/files/{path_of(args.name)}/shares/{path_of(args.user)}")
    emit(args, reply, lambda: f"{reply['username']} can no longer read {reply['filename']}.")


def cmd_shared(args: argparse.Namespace, session: Session) -> None:
    files = session.json("GET", "/shared")["files"]
    rows = [[f"{f['owner']}/{f['filename']}", human(f["size"]), f["created"] or ""] for f in files]
    emit(
        args,
        files,
        lambda: table(rows, ["OWNER/NAME", "SIZE", "CREATED"]) if rows else "Nothing shared with you.",
    )


def make_link(args: argparse.Namespace, session: Session, name: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.expires is not None:
        body["expires_in"] = args.expires
    if args.downloads is not None:
        body["max_downloads"] = args.downloads
    if args.password:
        body["password"] = read_secret("Link password: ", "VAULT_LINK_PASSWORD")
    return dict(session.json("POST", f"/files/{path_of(name)}/links", 201, json=body))


def show_link(args: argparse.Namespace, link: dict[str, Any]) -> None:
    emit(args, link)
    if args.json:
        return
    print(link["url"], flush=True)  # the point of the command: printed even with --quiet
    if args.qr:
        import segno  # only here: it is the slowest import and most commands need no QR code

        segno.make(link["url"], error="m").terminal(out=sys.stdout, compact=True)


def cmd_link(args: argparse.Namespace, session: Session) -> None:
    show_link(args, make_link(args, session, args.name))


def cmd_links(args: argparse.Namespace, session: Session) -> None:
    links = session.json("GET", "/links")["links"]
    rows = [
        [
            link["id"],
            link["filename"],
            link["expires"] or "never",
            "-" if link["downloads_left"] is None else f"{link['downloads_left']:g}",
            "yes" if link["password"] else "no",
        ]
        for link in links
    ]
    emit(
        args,
        links,
        lambda: table(rows, ["ID", "NAME", "EXPIRES", "LEFT", "PASSWORD"]) if rows else "No links.",
    )


def cmd_revoke(args: argparse.Namespace, session: Session) -> None:
    for link_id in args.ids:
        session.json("DELETE", "/links/" + path_of(link_id))
        say(args, f"Revoked link {link_id}.")


def cmd_send(args: argparse.Namespace, session: Session) -> None:
    (outcome,) = put_files(args, session, [args.file])
    show_link(args, make_link(args, session, outcome.name))


# -- the parser -------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, str]] = {
    "login": (
        "log in and remember the session",
        "vault login https://127.0.0.1:5000 --cacert certs/cert.pem\n"
        "  VAULT_PASSWORD=... vault login https://vault.example.org -u alice",
    ),
    "logout": ("end the session here and on the server", "vault logout"),
    "whoami": ("who you are, usage and quota", "vault whoami\n  vault whoami --json"),
    "put": (
        "upload files (resumable: run it again to continue)",
        "vault put big.iso\n  vault put *.jpg\n"
        "  vault put report.pdf --name 2026-report.pdf\n  tar c dir | vault put - --name dir.tar",
    ),
    "get": (
        "download a file, a shared file or a public link",
        "vault get big.iso\n  vault get big.iso -o /tmp/copy.iso\n"
        "  vault get --shared bob/notes.txt\n  vault get https://vault.example.org/s/AbC...\n"
        "  vault get big.iso -o - | sha256sum",
    ),
    "ls": ("list your files", "vault ls\n  vault ls --json"),
    "rm": ("delete files", "vault rm old.iso"),
    "share": ("let another user read a file", "vault share big.iso bob"),
    "unshare": ("take that back", "vault unshare big.iso bob"),
    "shared": ("files others shared with you", "vault shared"),
    "link": (
        "make a public link",
        "vault link big.iso --expires 1d --downloads 1\n  vault link big.iso --password --qr",
    ),
    "links": ("list your public links", "vault links"),
    "revoke": (
        "revoke public links by id",
        "vault revoke 3f2a9c1e\n  vault revoke -- -Xq2  (an id from before 2026-12 may begin with -)",
    ),
    "send": (
        "upload and print a public link in one go",
        "vault send big.iso\n  vault send photo.jpg --expires 1h --qr",
    ),
    "completion": (
        "print a shell completion script",
        "vault completion bash > ~/.local/share/bash-completion/completions/vault\n"
        "  echo 'eval \"$(vault completion zsh)\"' >> ~/.zshrc",
    ),
}


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or informational lines")
    common.add_argument("--cacert", metavar="FILE", help="trust this CA certificate (PEM); also VAULT_CACERT")
    return common


def _link_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expires", type=parse_duration, metavar="TIME", help="lifetime: 90s, 30m, 12h, 1d, 2w")
    p.add_argument("--downloads", type=int, metavar="N", help="allow N whole downloads")
    p.add_argument("--password", action="store_true", help="ask for a password the link will need")
    p.add_argument("--qr", action="store_true", help="also print the URL as a QR code")


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(
        prog="vault",
        description="Command-line client for a vault server: log in once, move files with progress, "
        "resume and verified SHA-256.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    top.add_argument("--version", action="version", version=f"vault {version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p: dict[str, argparse.ArgumentParser] = {}
    for name, (summary, examples) in COMMANDS.items():
        p[name] = sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"examples:\n  {examples}\n\n{EXIT_CODES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
    p["login"].add_argument("url", nargs="?", help="server URL (default: VAULT_URL or the last one)")
    p["login"].add_argument("-u", "--username", help="user name (default: VAULT_USER or a prompt)")
    for name in ("put", "send"):
        p[name].add_argument("--name", help="store under this name (default: the file's own)")
        p[name].add_argument(
            "--chunk-size",
            type=parse_size,
            default=upload.DEFAULT_CHUNK,
            metavar="SIZE",
            help="bytes per request (default 64M); at most this much is sent again after an interruption",
        )
    p["put"].add_argument("files", nargs="+", metavar="FILE", help="files to upload; - for standard input")
    p["send"].add_argument("file", metavar="FILE", help="the file to upload; - for standard input")
    p["get"].add_argument(
        "target", metavar="NAME|URL", help="your file's name, OWNER/NAME with --shared, or a link"
    )
    p["get"].add_argument("-o", "--output", metavar="PATH", help="where to save it (- for stdout)")
    p["get"].add_argument("--shared", action="store_true", help="NAME is OWNER/NAME, a file shared with you")
    p["rm"].add_argument("names", nargs="+", metavar="NAME")
    for name in ("share", "unshare"):
        p[name].add_argument("name", metavar="NAME")
        p[name].add_argument("user", metavar="USER")
    p["link"].add_argument("name", metavar="NAME")
    _link_options(p["link"])
    _link_options(p["send"])
    p["revoke"].add_argument("ids", nargs="+", metavar="ID")
    p["completion"].add_argument("shell", choices=["bash", "zsh"])
    return top


HANDLERS: dict[str, Callable[[argparse.Namespace, Session], None]] = {
    "whoami": cmd_whoami, "put": cmd_put, "ls": cmd_ls, "rm": cmd_rm, "share": cmd_share,
    "unshare": cmd_unshare, "shared": cmd_shared, "link": cmd_link, "links": cmd_links,
    "revoke": cmd_revoke, "send": cmd_send,
}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    check_usage(args)
    store = Store()
    if args.command == "completion":
        print(completion.script(parser(), args.shell), end="")
    elif args.command == "login":
        cmd_login(args, store)
    elif args.command == "logout":
        cmd_logout(args, store)
    elif args.command == "get" and args.target.startswith(("https://", "http://")):
        cmd_get(args, None, store)
    else:
        session = Session.open(store, args.cacert)
        try:
            if args.command == "get":
                cmd_get(args, session, store)
            else:
                HANDLERS[args.command](args, session)
        finally:
            session.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for option in ("json", "quiet"):
        setattr(args, option, getattr(args, option, False))
    args.cacert = getattr(args, "cacert", None)
    try:
        run(args)
    except CliError as exc:
        print(f"vault: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except httpx.TransportError as exc:
        print(f"vault: {transport_message('the server', exc)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        resume = " (run the same command again to resume)" if args.command in ("put", "get", "send") else ""
        print(f"\nvault: interrupted{resume}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
