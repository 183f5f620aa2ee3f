"""Sizes and durations as people write and read them: ``50G`` in, ``50.0 GiB`` out."""

from vault.config import parse_size as config_size

UNITS = "KMGTPE"
DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int | None:
    """``none`` (the configured default) or a size as vault.config.parse_size reads it
    (``50G``, ``500MiB``, ``100MB``, ``4096``). ValueError otherwise."""
    return None if text.strip().lower() == "none" else config_size(text.strip())


def format_size(nbytes: int) -> str:
    """``512 B``, ``1.5 KiB``, ``50.0 GiB``: one decimal from KiB up."""
    if nbytes < 1024:
        return f"{nbytes} B"
    value, unit = float(nbytes), ""
    for unit in UNITS:
        value /= 1024
        if value < 1024 or unit == UNITS[-1]:
            break
    return f"{value:.1f} {unit}iB"


def parse_duration(text: str) -> int:
    """Seconds from ``3600``, ``90m``, ``12h``, ``7d`` or ``2w``. ValueError otherwise."""
    text = text.strip().lower()
    factor = DURATIONS.get(text[-1:], 0)
    number = text[:-1] if factor else text
    if not number.isdigit():
        raise ValueError(f"not a duration: {text!r} (use seconds, 90m, 12h, 7d or 2w)")
    return int(number) * (factor or 1)
