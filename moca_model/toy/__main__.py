"""python -m moca_model.toy {build,eval,sheet} ... (see each command's -h)."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"build": "moca_model.toy.build", "eval": "moca_model.toy.evaluate", "sheet": "moca_model.toy.world"}
    if not argv or argv[0] not in commands:
        print("usage: python -m moca_model.toy {build,eval,sheet} [options]\n"
              "  build  rebuild the toy world's models (what `make toy` runs; resumable)\n"
              "  eval   likeness / prompt adherence of the shipped toy models on held-out people\n"
              "  sheet  a PNG contact sheet of toy people, references and clip frames", file=sys.stderr)
        return 2
    import importlib
    return int(importlib.import_module(commands[argv[0]]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
