"""The runtimes' silence is process-wide: blocks that overlap in threads must leave the streams as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_overlapping_quiet_blocks_in_threads_restore_stdout_and_stderr():
    # In a child: the test's own stdout is pytest's capture, and the point is what reaches the real fds.
    script = textwrap.dedent("""
        import os, sys, threading
        from qbench.host.quantize.quiet import quiet_runtime
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        def a():
            with quiet_runtime():
                a_in.set(); b_in.wait(10); print("hidden a"); os.write(2, b"hidden a fd\\n")
            a_out.set()
        def b():
            a_in.wait(10)
            with quiet_runtime():
                b_in.set(); a_out.wait(10); print("hidden b")
        threads = [threading.Thread(target=f) for f in (a, b)]
        [t.start() for t in threads]; [t.join(20) for t in threads]
        print("table"); sys.stdout.flush()
        sys.stderr.write("qbench: error: summary\\n"); sys.stderr.flush()
        os.write(1, b"fd table\\n")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["table", "fd table"]
    assert done.stderr.splitlines() == ["qbench: error: summary"]
