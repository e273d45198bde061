"""The fixture image server as its own process, so it never shares a GIL or RSS with the measured client.

    python -m bench.serve_child --files LIST --delay 0.1

LIST holds one image path a line; each is served at /img/<file name>. The child prints its base URL
as one line, then serves until its stdin is closed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.devkit.image_server import ImageServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    with ImageServer(delay_s=args.delay) as server:
        for line in args.files.read_text().splitlines():
            path = Path(line)
            server.add_file(f"/img/{path.name}", path, "image/jpeg")
        print(server.url("/img/"), flush=True)
        sys.stdin.read()  # the parent closes our stdin to stop us


if __name__ == "__main__":
    main()
