"""Assertions whose failure messages stay readable for large values."""


def assert_same_bytes(actual, expected, what="message"):
    if actual == expected:
        return
    n = min(len(actual), len(expected))
    i = next((k for k in range(n) if actual[k] != expected[k]), n)
    lo = max(0, i - 80)
    raise AssertionError(
        f"{what} differs: got {len(actual)} bytes, expected {len(expected)};"
        f" first difference at offset {i}\n"
        f"  got:      {actual[lo:i + 80]!r}\n"
        f"  expected: {expected[lo:i + 80]!r}")


def backend_view(backend, message):
    """What `backend` records for a CRLF message sent to it intact."""
    if backend.name == "smtp-sink":
        return message.replace(b"\r\n", b"\n")
    return message
