"""The disk reserve's log lines: a first start allocates it quietly (INFO), and only a reserve
given up for a full disk and taken back says so as a warning (an operator's alert), whichever
process (worker) gave it up and whichever takes it back."""

import logging
from pathlib import Path

import pytest

from storage.reserve import Reserve

SIZE = 64 * 1024


def test_first_allocation_is_info_and_only_a_retaking_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reserve = Reserve(tmp_path / "reserve", SIZE)
    with caplog.at_level(logging.INFO, logger="storage.reserve"):
        assert reserve.hold()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"allocated a disk reserve of {SIZE} bytes: {tmp_path / 'reserve'}")
    ]
    assert (tmp_path / "reserve").stat().st_size == SIZE
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="storage.reserve"):
        reserve.release()
        assert not (tmp_path / "reserve").exists()
        assert reserve.hold()
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING]
    assert "held again: uploads are accepted" in caplog.records[1].getMessage()


def test_a_reserve_another_process_gave_up_is_retaken_with_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers: each process has its own Reserve on the one file. The one that takes it back
    is seldom the one that gave it up."""
    path = tmp_path / "reserve"
    first, second = Reserve(path, SIZE), Reserve(path, SIZE)
    assert first.hold() and second.hold()  # the second finds it held: nothing to say
    with caplog.at_level(logging.INFO, logger="storage.reserve"):
        first.release()
        assert second.hold()
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING]
    assert "held again: uploads are accepted" in caplog.records[1].getMessage()
