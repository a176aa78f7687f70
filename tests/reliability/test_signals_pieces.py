"""A signal while install's last part goes up in two pieces: the run exits 128+signal, no
multipart upload is left open (hidden, billed pieces) and nothing of the run stays in the
bucket — no part, no manifest, no lock.

The last part is in flight only once bundling has ended, i.e. while the sink commits: a signal
there is held (``FanOutSink.commit`` is a critical section) until the publication reaches its
commit point, the manifest PUT, and stops it there: the manifest is never sent, and the
interrupted run removes what it wrote. (A signal once the manifest PUT has started keeps the
bundle: test_signals_commit.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.support.cli import MIB, install_argv, keys_in
from tests.support.s3kit import REPO, cli_env


def test_sigterm_during_the_pieces_aborts_the_upload(proxy, s3, bucket, tmp_path, user_keys,
                                                     ec2_keys):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(7 * MIB))  # one part of ~7 MiB: the last, in two pieces
    held = proxy.add_rule("delay", r"partNumber=2", method="PUT", times=1, delay=2.0)
    argv = [*install_argv(image, user_keys, proxy.url, bucket=f"{bucket}/sig",
                          ec2cert=ec2_keys[1], name="disk", register=False),
            "--no-check", "--jobs", "2", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "bundler", *argv], cwd=REPO, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not held.hits and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # poll: the piece's request comes from the child
        assert held.hits == 1, "the second piece was never sent"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert proxy.wait_idle()
    last = err.decode().strip().splitlines()[-1]
    assert "interrupted by SIGTERM" in last and "nothing partial was kept" in last, last
    assert proxy.requests("PUT", r"\.manifest\.xml$") == []  # stopped before the commit point
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not keys_in(s3, bucket, "sig/")
