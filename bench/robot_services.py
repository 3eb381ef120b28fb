#!/usr/bin/env python
"""Per-call latency of the robot services, run locally and through `hubnode call` on 127.0.0.1.

Starts a real `hubnode serve --example-services` in a temporary home, then times whole
processes for each service, both ways, with the same input (median after one warm-up):

  speak "Hello Jenny, how are you today?"          text in, WAV out
  listen --words "..."  and listen (free vocabulary) that WAV in, text out
  face identify                                      scikit-image's astronaut.png in

The difference between the two columns is what the network costs a call: the client's
start, the Noise handshake, the job's start on the node, and streaming both ways.

    .venv/bin/python bench/robot_services.py [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HUBNODE, PYTHON, BenchError, bytecode_cache, command_latency, hubnode_server

TEXT = "Hello Jenny, how are you today?"
WORDS = "hello jenny how are you today alice bob"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import skimage

    photo = (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()
    try:
        with (
            bytecode_cache() as env,
            hubnode_server('listen = "127.0.0.1:0"\n', env, ["--example-services"]) as server,
        ):
            wav = subprocess.run(["espeak-ng", "--stdout", TEXT], capture_output=True, check=True).stdout
            cases = [
                ("speak", [TEXT], b""),
                ("listen", ["--words", WORDS], wav),
                ("listen", [], wav),
                ("face", ["identify"], photo),
            ]
            print(f"robot services: whole-process wall time, median of {args.runs} after a warm-up")
            print(f"  {'call':<36} {'local ms':>9} {'hubnode call ms':>16} {'difference':>11}")
            for service, call_args, stdin in cases:
                local = [PYTHON, "-m", f"hubnet_robot.{service}"]
                if service == "face":
                    local += ["--db", str(server.client_home / "faces.sqlite")]
                remote = [
                    HUBNODE,
                    "--home",
                    str(server.client_home),
                    "call",
                    "--server",
                    server.target,
                    service,
                ]
                here = command_latency(local, call_args, stdin, args.runs, env)
                there = command_latency(remote, call_args, stdin, args.runs, env)
                label = " ".join([service, *call_args])[:36]
                print(
                    f"  {label:<36} {here * 1000:>9.0f} {there * 1000:>16.0f} {(there - here) * 1000:>+10.0f}"
                )
    except BenchError as exc:
        print(f"robot services: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
