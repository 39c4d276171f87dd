"""What the CPU runtime set up in this process: `python -m cnnjax.runtime.info [VAR ...]`.

Without arguments prints the XLA flags, the malloc tunables (transparent huge pages,
cnnjax/runtime/malloc.py) and whether oneDNN's convolutions and the recompute barrier are
available here (and why not). With arguments prints those environment variables' values,
one per line (empty when unset).
"""

import os
import sys


def main(argv: list[str]) -> int:
    if argv:
        for name in argv:
            print(os.environ.get(name, ""))
        return 0
    from cnnjax.ops import onednn
    from cnnjax.runtime import malloc, materialize

    print(f"XLA_FLAGS       {os.environ.get('XLA_FLAGS', '')}")
    print(f"GLIBC_TUNABLES  {os.environ.get('GLIBC_TUNABLES', '')} "
          f"(huge pages for malloc: {'on' if malloc.in_effect() else 'off'})")  # fmt: skip
    for name, lib in (("oneDNN", onednn), ("barrier", materialize)):
        ok, why = lib.available()
        print(f"{name:<15} {'available' if ok else 'unavailable: ' + why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
