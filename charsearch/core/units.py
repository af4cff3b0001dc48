"""How numbers are written: losses in nats per character (and bits, char-rnn's unit), parameter values."""

from __future__ import annotations

import math

LN2 = math.log(2)


def bits(nats: float) -> float:
    """Nats per character as bits per character."""
    return nats / LN2


def loss_text(nats: float, digits: int = 4) -> str:
    """'1.4697 nats/char (2.1203 bits/char)'."""
    return f"{nats:.{digits}f} nats/char ({bits(nats):.{digits}f} bits/char)"


def human_bytes(n: float) -> str:
    """A size in decimal units, as every size charsearch prints: '1.2 GB', '850.0 kB', '12 bytes'."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000


def fmt(value) -> str:
    """A parameter's value in a table or a line: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
