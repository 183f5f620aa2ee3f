"""Sizes and durations as people write and read them: ``50G`` in, ``50.0 GiB`` out."""

UNITS = "KMGTPE"
DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int | None:
    """``none`` (the configured default), a byte count, or a whole number with K, M, G, T, P or
    E (binary multiples; a trailing ``B`` or ``iB`` is allowed). ValueError otherwise."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text == "NONE":
        return None
    factor = 1024 ** (UNITS.index(text[-1]) + 1) if text and text[-1] in UNITS else 1
    number = text[:-1] if factor > 1 else text
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (use bytes, 10G, 500M or none)")
    return int(number) * factor


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
