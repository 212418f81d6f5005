"""Instruction mix of each kernel in a cubin/.so, from ``cuobjdump -sass`` (a profiling aid).

    python bench/sass_mix.py path/to/_mma.so [name-substring ...]
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys


def main() -> None:
    path, wanted = sys.argv[1], sys.argv[2:]
    sass = subprocess.run(["cuobjdump", "-sass", path], capture_output=True, text=True, check=True).stdout
    for block in sass.split("Function : ")[1:]:
        name = block.split("\n", 1)[0].strip()
        if wanted and not all(w in name for w in wanted):
            continue
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", block)
        mix = collections.Counter(ops)
        print(f"{name}: {len(ops)} instructions")
        print("   " + ", ".join(f"{op} {c}" for op, c in mix.most_common(25)))


if __name__ == "__main__":
    main()
