"""``python -m qbench.agent`` (or ``qbench agent``): run the agent on this machine.

Prints one line on stdout once bound, ``QBENCH_AGENT_READY <endpoint>``, and logs to
stderr only: stdout belongs to whoever started the agent.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys

from qbench.protocols.auth import parse_keys_line

from .auth import check_bind
from .config import AgentConfig, start_zygotes


def parse_args(argv: list[str] | None) -> AgentConfig:
    parser = argparse.ArgumentParser(prog="qbench agent", description="Run the qbench agent on this device.")
    parser.add_argument("--bind", default="tcp://127.0.0.1:0",
                        help="ZeroMQ endpoint (default loopback, random port); beyond loopback only with --keys-stdin")
    parser.add_argument("--keys-stdin", action="store_true",
                        help="read 'QBENCH_KEYS <secret> <client key>' from stdin: CURVE, only that client")
    parser.add_argument("--no-auth", action="store_true",
                        help="no keys: any local user can drive the agent (loopback binds only; development)")
    parser.add_argument("--allow-delegate", action="append", default=[], metavar="PATH",
                        help="an external TFLite delegate library requests may name (repeat)")
    parser.add_argument("--cache-max-mb", type=int, default=None,
                        help="evict least recently used models above this size (default: a tenth of the disk)")
    parser.add_argument("--cache-dir", default="~/.qbench/cache", help="model cache (content-addressed)")
    parser.add_argument("--max-model-mb", type=int, default=2048)
    parser.add_argument("--max-frame-mb", type=int, default=512)
    parser.add_argument("--max-message-mb", type=int, default=1024, help="all frames of one request together")
    parser.add_argument("--max-frames", type=int, default=256, help="tensor frames per request")
    parser.add_argument("--threads", type=int, default=None, help="default runtime threads (emulate a smaller device)")
    parser.add_argument("--cpus", default="", help="CPU affinity of workers, e.g. 0,1")
    parser.add_argument("--memory-limit-mb", type=int, default=None, help="address-space limit of each worker")
    parser.add_argument("--worker-cmd", default="", help="interpreter command for workers (default: this Python)")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (SSH sessions)")
    parser.add_argument("--warm", default="", help="runtimes to preload for the first job, e.g. onnxruntime")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    config = AgentConfig(
        bind=args.bind,
        cache_dir=args.cache_dir,
        max_model_bytes=args.max_model_mb * 1024 * 1024,
        max_frame_bytes=args.max_frame_mb * 1024 * 1024,
        threads=args.threads,
        cpus=[int(c) for c in args.cpus.split(",") if c.strip()],
        memory_limit_mb=args.memory_limit_mb,
        exit_on_stdin_eof=args.exit_on_stdin_eof,
        warm=[r for r in args.warm.split(",") if r.strip()],
        delegate_paths=args.allow_delegate,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_frames=args.max_frames,
        cache_max_bytes=None if args.cache_max_mb is None else args.cache_max_mb * 1024 * 1024,
    )
    if args.worker_cmd:
        config.worker_cmd = shlex.split(args.worker_cmd)
    if args.keys_stdin == args.no_auth:
        parser.error("pass --keys-stdin (the host does: it writes the keys on stdin) or --no-auth")
    if args.keys_stdin:
        # the first stdin line: later lines (none) and EOF are the --exit-on-stdin-eof watcher's
        try:
            config.keys = parse_keys_line(sys.stdin.buffer.readline())
        except ValueError as exc:
            parser.error(f"--keys-stdin: {exc}")
    try:
        check_bind(args.bind, config.keys is not None)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="agent %(levelname)s %(message)s")
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        zygotes = start_zygotes(config)  # first: their imports overlap the agent's own (numpy, ZeroMQ)
        from .server import Agent

        agent = Agent(config, zygotes)
    except Exception as exc:  # bind failures and an unwritable cache: one line, then exit
        print(f"qbench agent: cannot start: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    if config.exit_on_stdin_eof:
        # the host that started it ends it (stdin EOF): a Ctrl-C meant for the host, which a terminal sends
        # to the agent too, must not kill it before the host has stopped its job and kept the results
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"QBENCH_AGENT_READY {agent.endpoint}", flush=True)
    try:
        agent.serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # serve() closed the socket and reaped the zygotes: the interpreter's own teardown (collecting
    # every module's objects) would only delay the exit the host waits for.
    os._exit(code)
