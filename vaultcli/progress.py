"""Progress bars (tqdm: bytes, speed, time left), shown only when stderr is a terminal and
not ``--quiet``; otherwise every call is a no-op."""

import sys
from typing import Any


class Progress:
    """One bar per file, plus a total bar when several files move in one command."""

    def __init__(self, quiet: bool, total: int | None = None, files: int = 1) -> None:
        self.quiet = quiet
        self.enabled = not quiet and sys.stderr.isatty()
        self.total_bar: Any = None
        if self.enabled and files > 1:
            self.total_bar = self._bar("total", total, position=0)
        self.bar: Any = None

    def _bar(self, label: str, size: int | None, position: int, initial: int = 0, leave: bool = True) -> Any:
        from tqdm import tqdm  # only with bars on: a script's commands start faster without it

        return tqdm(
            total=size,
            initial=initial,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            position=position,
            leave=leave,
            dynamic_ncols=True,
            file=sys.stderr,
            miniters=1,
            mininterval=0.2,
        )

    def start(self, label: str, size: int | None, initial: int = 0) -> None:
        """A bar for the next file; ``initial`` is what an earlier run already moved."""
        self.finish()
        if self.enabled:
            several = self.total_bar is not None  # then a finished file's bar gives way to the next
            self.bar = self._bar(label, size, position=int(several), initial=initial, leave=not several)
        self.advance_total(initial)

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)
        self.advance_total(nbytes)

    def advance_total(self, nbytes: int) -> None:
        if self.total_bar is not None:
            self.total_bar.update(nbytes)

    def rewind(self, nbytes: int) -> None:
        """Bytes sent again after a retry do not count twice."""
        self.advance(-nbytes)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.finish()
        if self.total_bar is not None:
            self.total_bar.close()
            self.total_bar = None

    def note(self, message: str) -> None:
        """An informational line on stderr (not with --quiet) that does not tear the bars."""
        if self.quiet:
            return
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)
