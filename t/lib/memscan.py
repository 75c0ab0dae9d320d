"""Search a live process's memory for byte strings (root only).

Used to check that secrets are wiped, not merely freed: freed heap
memory keeps its bytes until reused, and a worker is long-lived.
"""

import os


def can_scan():
    return os.geteuid() == 0


def find(pid, needles, context=40):
    """{needle: [bytes around each occurrence]} over the readable
    private mappings of pid (heap and anonymous memory)."""
    found = {}
    with open(f"/proc/{pid}/maps") as maps, \
            open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            if not fields[1].startswith("r") or name.startswith("[v") \
                    or (name and not name.startswith("[")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start > 1 << 30:
                continue            # ASan's shadow, not data
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for n in needles:
                i = data.find(n)
                while i >= 0:
                    found.setdefault(n, []).append(
                        data[max(0, i - context):i + len(n) + context])
                    i = data.find(n, i + 1)
    return found
