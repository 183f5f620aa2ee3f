"""Issue 18's hand mutations: one-line breaks of a rule, each of which must fail named tests.

    python -m bench.hand_mutations              every mutation, then the tests on the real code
    python -m bench.hand_mutations NAME ...     only these (names below)
    python -m bench.hand_mutations --files ...  run each mutation's whole test files instead of
                                                the named tests (to find every test that kills it)

Each mutation is applied to a copy of the checkout (git ls-files) in a temporary directory,
never to the checkout itself, and the copy's tests run at nice 19. A mutation survives if its
tests all pass; the real code must pass them. The table it prints is the one in
bench/mutation-survivors.md ("Issue 18's hand mutations"). Not part of the default test run.
"""

import argparse
import re
import shutil
import subprocess  # nosec B404  # runs git and pytest, argv lists only
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str  # must occur exactly once in path
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail with it


TOKENS = "tests/test_tokens.py::"
CORE = "tests/test_core_rules.py::"
SURVIVORS = [  # the six survivors the issue names
    Mutation(
        "epoch-row-tag",  # the account row's tag not checked when its token epoch is read
        "vault/auth.py",
        "        if user is not None and not self._authentic(user):\n"
        '            log.error("account row %d failed its integrity check", user.id)\n'
        "            user = None\n        epoch = None",
        "        epoch = None",
        (
            TOKENS + "test_an_old_access_token_stays_dead_when_the_epoch_is_set_back_in_the_database",
            CORE + "test_an_epoch_set_back_in_the_database_does_not_revive_an_ended_access_token",
        ),
    ),
    Mutation(
        "quota-chunk-grow",  # the streaming quota grows the hold to the bytes before this chunk
        "vault/quota.py",
        "await self._quotas._grow(self, total)",
        "await self._quotas._grow(self, self.charged)",
        (
            "tests/test_quotas.py::test_chunked_upload_whose_last_chunk_crosses_the_quota_stores_nothing",
            "tests/test_admission.py::test_an_upload_refused_growth_is_told_exactly_what_it_may_still_use",
        ),
    ),
    Mutation(
        "quota-chunk-check",  # the hold is grown only when the bytes before this chunk overran it
        "vault/quota.py",
        "if self.quota is not None and total > self.reserved:",
        "if self.quota is not None and self.charged > self.reserved:",
        (  # over HTTPS the chunks are the server's reads: whether the crossing one is checked varies
            "tests/test_admission.py::test_an_upload_refused_growth_is_told_exactly_what_it_may_still_use",
            "tests/test_admission.py::test_an_upload_growing_past_a_commit_of_another_process_is_refused",
        ),
    ),
    Mutation(
        "link-spent-lt",  # <= turned into < in the exhausted-link check
        "vault/sharing.py",
        "if left is not None and left <= 0:",
        "if left is not None and left < 0:",
        (
            "tests/test_sharing.py::test_a_link_whose_budget_is_spent_to_the_byte_is_gone_for_head_and_the_page_too",
            CORE + "test_a_link_is_gone_when_its_budget_is_spent_to_the_byte",
        ),
    ),
    Mutation(
        "bidi-three",  # U+061C, U+200E and U+200F dropped from the forbidden characters
        "vault/names.py",
        "\\u061c\\u200e\\u200f",
        "",
        (
            "tests/test_names.py::test_every_bidi_control_character_is_rejected",
            "tests/test_properties.py::test_a_forbidden_character_anywhere_is_refused",
        ),
    ),
    Mutation(
        "seal-non-final-length",  # seal_segment's length check for non-final segments removed
        "vault/format.py",
        "        if len(plaintext) != seg_size:\n"
        '            raise ValueError("a non-final segment must hold exactly the segment size")\n',
        "",
        ("tests/test_format.py::test_seal_refuses_a_non_final_segment_of_any_length_but_the_segment_size",),
    ),
    Mutation(
        "refresh-epoch",  # the refresh path's epoch check removed
        "vault/auth.py",
        "if user is None or user.token_epoch != row.epoch or user.disabled:",
        "if user is None or user.disabled:",
        (
            TOKENS + "test_a_refresh_row_rolled_back_to_before_log_out_everywhere_does_not_refresh",
            CORE + "test_a_refresh_row_restored_from_before_log_out_everywhere_does_not_refresh",
        ),
    ),
]

WEAK = [  # the rules the weak tests guard, broken: each test must now fail
    Mutation(
        "log-unredacted",  # a link's secret written to the log in clear
        "handlers/redact.py",
        "return _LINK_SECRET.sub(SECRET_MASK, path)",
        "return path",
        (
            "tests/test_sharing.py::test_link_token_is_not_written_to_the_server_log",
            "tests/test_hostile.py::test_link_secrets_are_masked_in_every_log_line",
        ),
    ),
    Mutation(
        "log-silent",  # no access log line at all: a leak test must not pass on an empty log
        "handlers/__init__.py",
        'access_log.log(level, "%d %s %s',
        'access_log.log(logging.DEBUG, "%d %s %s',
        (
            "tests/test_sharing.py::test_link_token_is_not_written_to_the_server_log",
            "tests/test_hostile.py::test_link_secrets_are_masked_in_every_log_line",
        ),
    ),
    Mutation(
        "refresh-race-no-winner",  # every refresh refused: the race test must count one winner
        "vault/tokens.py",
        "        return token\n\n    async def revoke",
        "        raise RevokedToken()\n\n    async def revoke",
        (TOKENS + "test_two_refreshes_with_one_token_at_once_leave_exactly_one_winner",),
    ),
    Mutation(
        "refresh-race-every-winner",  # the compare-and-set of a rotation ignores its row count
        "storage/sqlite.py",
        "(used.used, used.key_id, used.tag, old.id, old.tag),\n"
        "            )\n            if cursor.rowcount != 1:",
        "(used.used, used.key_id, used.tag, old.id, old.tag),\n"
        "            )\n            if cursor.rowcount < 0:",
        (
            TOKENS + "test_two_refreshes_with_one_token_at_once_leave_exactly_one_winner",
            CORE + "test_a_row_rotated_twice_at_once_revokes_its_family",
        ),
    ),
    Mutation(
        "edit-matches-nothing",  # a test's database edit aimed at no row (a test mutation)
        "tests/test_registration.py",
        'con.execute("UPDATE users SET disabled = 0 WHERE username = ?", (name,))',
        'con.execute("UPDATE users SET disabled = 0 WHERE username = ?", (name + "x",))',
        ("tests/test_registration.py::test_enabling_a_row_by_hand_does_not_let_a_disabled_user_in",),
    ),
    Mutation(
        "tamper-reads-extra",  # the reader asks for a row past the last segment (and drops it)
        "vault/pipeline.py",
        "rows = await self.store.read_tags(file_id, count)",
        "rows = (await self.store.read_tags(file_id, count + 1))[:count]",
        ("tests/test_tamper.py::test_appended_segment_is_never_served",),
    ),
    Mutation(
        "bcrypt-queue-unbounded",  # logins wait for bcrypt however many are queued
        "vault/auth.py",
        "if self._pending >= MAX_PENDING_HASHES:",
        "if self._pending >= 10**9:",
        (
            "tests/test_auth.py::test_logins_beyond_the_pending_limit_are_refused_with_busy",
            "tests/test_throttle.py::test_a_flood_of_logins_beyond_the_bcrypt_queue_gets_503_over_https",
        ),
    ),
    Mutation(
        "busy-not-503",  # the core refuses, the answer is not 503 (only HTTPS sees it)
        "handlers/base.py",
        "    Busy: 503,",
        "    Busy: 500,",
        ("tests/test_throttle.py::test_a_flood_of_logins_beyond_the_bcrypt_queue_gets_503_over_https",),
    ),
    Mutation(
        "busy-no-retry-after",  # a 503 without Retry-After (only HTTPS sees it)
        "handlers/base.py",
        'if isinstance(exc, Busy):\n            self.set_header("Retry-After", "5")',
        "if False:\n            pass",
        ("tests/test_throttle.py::test_a_flood_of_logins_beyond_the_bcrypt_queue_gets_503_over_https",),
    ),
    Mutation(
        "405-after-prepare",  # unsupported methods reach prepare(): PUT /tus answers 412
        "handlers/base.py",
        'if "SUPPORTED_METHODS" not in cls.__dict__:',
        "if False:",
        (
            "tests/test_openapi.py::test_api_conforms_to_its_document",
            "tests/test_openapi.py::test_method_not_allowed_is_405_with_allow_before_any_other_check",
        ),
    ),
    Mutation(
        "sleep-unclassified",  # a loop turn made a sleep, as synchronisation (a test mutation)
        "tests/test_budget.py",
        "await asyncio.sleep(0)\n        assert not waiting.done() and budget.waiting == 1",
        "await asyncio.sleep(0.01)\n        assert not waiting.done() and budget.waiting == 1",
        ("tests/test_suite_rules.py::test_every_sleep_is_classified",),
    ),
    Mutation(
        "curl-unmarked",  # a curl test without needs_curl (a test mutation)
        "tests/test_transfers.py",
        "@needs_curl\ndef test_curl_without_token_gets_401",
        "def test_curl_without_token_gets_401",
        ("tests/test_suite_rules.py::test_every_test_that_runs_curl_skips_where_curl_is_missing",),
    ),
]
MUTATIONS = SURVIVORS + WEAK


def checkout_copy(dest: Path) -> None:
    listed = subprocess.run(  # nosec B603 B607  # git from PATH, fixed argv
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    for name in listed.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def failing(tree: Path, tests: list[str]) -> tuple[int, list[str]]:
    """Run ``tests`` in ``tree``: pytest's exit code and the node ids that failed or erred."""
    argv = ["nice", "-n", "19", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(  # nosec B603 B607  # nice from PATH, fixed argv
        [*argv, "-rfE", "--tb=no", *tests], cwd=tree, capture_output=True, text=True
    )
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", done.stdout, re.MULTILINE)
    return done.returncode, list(dict.fromkeys(failed))


def apply(tree: Path, mutation: Mutation) -> str:
    path = tree / mutation.path
    original = path.read_text(encoding="utf-8")
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the line to mutate is not in {mutation.path} exactly once")
    path.write_text(original.replace(mutation.old, mutation.new), encoding="utf-8")
    return original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--files", action="store_true", help="run the named tests' whole files")
    parser.add_argument("--with", dest="extra", action="append", default=[], help="more tests to run")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    if not chosen:
        raise SystemExit(f"no such mutation; known: {', '.join(m.name for m in MUTATIONS)}")
    survivors = 0
    with tempfile.TemporaryDirectory(prefix="hand-mutations-") as tmp:
        tree = Path(tmp)
        checkout_copy(tree)
        every: list[str] = []
        for mutation in chosen:
            tests = sorted({t.split("::")[0] for t in mutation.tests}) if args.files else list(mutation.tests)
            tests += [t for t in args.extra if t not in tests]
            every += [t for t in tests if t not in every]
            original = apply(tree, mutation)
            try:
                code, failed = failing(tree, tests)
            finally:
                (tree / mutation.path).write_text(original, encoding="utf-8")
            killed = code == 1 and bool(failed)
            survivors += not killed
            print(f"{mutation.name}: {'killed' if killed else 'SURVIVED'} (exit {code})", flush=True)
            for node in failed:
                print(f"    {node}", flush=True)
        code, failed = failing(tree, every)
        print(
            f"real code: {'pass' if code == 0 else 'FAIL'} (exit {code}, {len(every)} test ids)", flush=True
        )
        for node in failed:
            print(f"    {node}", flush=True)
    return 1 if survivors or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
