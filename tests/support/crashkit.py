"""Crash-consistency kit: run the real CLI, kill it at random or chosen points, inspect.

Used by tests/reliability/test_crash.py (a small fixed sample) and scripts/chaos.py (as many
runs as the time allows). Two ways to crash a run:

* ``kill_at_random``: ``python -m bundler …`` in a subprocess, SIGKILL after a random delay.
* ``crash_at_step``: the CLI in a forked child whose N-th filesystem call (link, unlink,
  rename, fsync, mkdir, open, rmtree, ftruncate …) is replaced by ``os._exit(137)``; walking
  N = 1, 2, … visits every point between two filesystem operations of a run.

Then ``inspect_*`` checks the destination: a manifest present ⇒ every part present and
verifying and the image digest the original's; an image under its final name ⇒ identical to
the original; anything else is a clearly named ``.ami-bundler-*`` temporary entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bundler.cli
from bundler import api
from bundler.errors import BundlerError
from bundler.manifest import parse_manifest
from bundler.tempnames import TEMP_MARK

REPO = Path(__file__).resolve().parents[2]
# Forked runs inherit what the parent imported: build the parser once so the command modules
# (and boto3 behind them) are loaded here, not again in every child.
bundler.cli.build_parser()
CRASH_EXIT = 137
# Filesystem calls a crash is injected before (module, attribute).
STEP_FUNCTIONS: tuple[tuple[object, str], ...] = (
    (os, "link"), (os, "unlink"), (os, "rename"), (os, "replace"), (os, "fsync"), (os, "fdatasync"),
    (os, "mkdir"), (os, "open"), (os, "ftruncate"), (os, "rmdir"), (shutil, "rmtree"),
)


@dataclass
class Workspace:
    root: Path
    image: Path
    key: Path
    cert: Path
    ec2cert: Path
    image_sha1: str
    part_size: int | None = None  # forked runs only: smaller parts, more of them, faster
    digest: str = ""  # tar-stream digest of a good bundle of ``image`` ("": not checked)

    def bundle_args(self, dest: Path, name: str = "img", *extra: str) -> list[str]:
        return ["bundle-image", "-i", str(self.image), "-c", str(self.cert), "-k", str(self.key),
                "-u", "123456789012", "--ec2cert", str(self.ec2cert), "-d", str(dest),
                "-r", "x86_64", "-p", name, "-q", "--jobs-compress", "2", *extra]

    def unbundle_args(self, manifest: Path, out: Path, *extra: str) -> list[str]:
        return ["unbundle", "-m", str(manifest), "-k", str(self.key), "-d", str(out), "-q", *extra]


def make_workspace(root: Path, key: Path, cert: Path, ec2cert: Path, *, size: int = 11 << 20,
                   seed: int = 1, part_size: int | None = None) -> Workspace:
    """An image of ``size`` bytes (incompressible, with a hole) and a reference bundle."""
    import random

    root.mkdir(parents=True, exist_ok=True)
    image = root / "source.img"
    rnd = random.Random(seed)
    with open(image, "wb") as fh:
        fh.write(rnd.randbytes(size // 2))
        fh.seek(size // 2 + (1 << 20))
        fh.write(rnd.randbytes(size - fh.tell()))
    ws = Workspace(root, image, key, cert, ec2cert, sha1_file(image), part_size)
    ref = root / "reference"
    clean_dir(ref)
    result = run_cli(ws.bundle_args(ref), part_size)
    assert result == 0, "reference bundle failed"
    ws.digest = parse_manifest((ref / "img.manifest.xml").read_bytes()).manifest.digest
    return ws


def sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_cli(argv: Sequence[str], part_size: int | None = None) -> int:
    """The CLI in a forked child (fast: no interpreter start-up), its exit code."""
    return crash_at_step(argv, 0, part_size)[1]


def _run_in_child(body: Callable[[], int], part_size: int | None) -> int:
    """Fork; the child runs ``body`` (the CLI, armed) with its output silenced (unless
    $CRASHKIT_STDERR is set, to see why a child failed) and exits with its code (71 when it
    raised). Returns the child's exit code."""
    _, status = os.waitpid(start_in_child(body, part_size), 0)
    return os.waitstatus_to_exitcode(status)


def start_in_child(body: Callable[[], int], part_size: int | None = None) -> int:
    """Fork a child that runs ``body`` as ``_run_in_child`` describes; returns its PID (the
    caller reaps it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 70
        try:
            if not os.environ.get("CRASHKIT_STDERR"):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the child exits
            if part_size:
                import bundler.partcutter

                bundler.partcutter.PART_SIZE = part_size
            code = body()
        except BaseException:  # noqa: BLE001 - the child must exit, whatever happened
            code = 71
        finally:
            os._exit(code)
    return pid


def _main(argv: Sequence[str]) -> int:
    from bundler.cli import main

    return main(list(argv))


def crash_at_step(argv: Sequence[str], step: int, part_size: int | None = None) -> tuple[bool, int]:
    """Run the CLI in a forked child that dies before its ``step``-th filesystem call
    (0: never). ``part_size`` shrinks the parts (more commit steps from a small image).
    Returns (crashed, exit code)."""
    def body() -> int:
        if step:
            _arm(step)
        return _main(argv)

    code = _run_in_child(body, part_size)
    return code == CRASH_EXIT, code


def signal_at_step(argv: Sequence[str], step: int, signum: int, part_size: int | None = None, *,
                   http: bool = False, fs: bool = True, finished: int = 0) -> tuple[bool, int]:
    """Like ``crash_at_step``, but the child sends itself ``signum`` before its ``step``-th
    filesystem call (from whichever thread makes it) and carries on; with ``http`` every HTTP
    request botocore sends counts as a step too (``fs=False``: only those). Returns
    (signalled, exit code): not signalled means the run had fewer steps (and ended with
    ``finished``, else the code is 72)."""
    def body() -> int:
        fired = _arm(step, signum, http=http, fs=fs)
        code = _main(argv)
        if not fired[0]:
            return 0 if code == finished else 72  # finished before the step: not signalled
        return 73 if code == 0 else code  # 73: signalled, yet reported success

    code = _run_in_child(body, part_size)
    return code not in (0, 72), code


def _arm(step: int, signum: int | None = None, *, http: bool = False,
         fs: bool = True) -> list[bool]:
    calls = [0]
    fired = [False]

    def wrap(original: Callable) -> Callable:
        def crashing(*args, **kwargs):
            calls[0] += 1
            if calls[0] == step:
                if signum is None:
                    os._exit(CRASH_EXIT)
                fired[0] = True
                os.kill(os.getpid(), signum)
            return original(*args, **kwargs)
        return crashing

    for module, name in STEP_FUNCTIONS if fs else ():
        if hasattr(module, name):
            setattr(module, name, wrap(getattr(module, name)))
    if http:
        import botocore.httpsession

        session = botocore.httpsession.URLLib3Session
        session.send = wrap(session.send)  # type: ignore[method-assign]
    return fired


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def walk_signals(argv: Sequence[str] | Callable[[], Sequence[str]], reset: Callable[[], None],
                 check: Callable[[str], None], *,
                 part_size: int | None = None, http: bool = False, fs: bool = True, stride: int = 1,
                 offset: int = 0, limit: int = 400, finished: int = 0) -> int:
    """Signal the run before step offset+1, offset+1+stride, … (see ``signal_at_step``) until a
    run ends before its signal; the three signals take turns (one handler serves them all, so
    every step sees one of them and each signal a third of the steps). Each signalled run must
    exit 128+signal, then ``check(when)`` inspects what it left; the unsignalled run must exit
    ``finished``. ``argv`` may be a function, called after each reset. Returns the runs
    signalled."""
    visited = 0
    for step in range(1 + offset, limit, stride):
        signum = SIGNALS[(step // stride) % len(SIGNALS)]
        reset()
        args = argv() if callable(argv) else argv
        signalled, code = signal_at_step(args, step, signum, part_size, http=http, fs=fs,
                                        finished=finished)
        if not signalled:
            assert code == 0, f"unsignalled run ended with {code}, not {finished}"
            return visited
        visited += 1
        when = f"{signal.Signals(signum).name} before step {step}"
        assert code == 128 + signum, f"{when}: exit {code}"
        check(when)
    raise AssertionError(f"the run still had steps after {limit}")


@contextlib.contextmanager
def one_model_loader(*warm: str) -> Iterator[None]:
    """Every run makes a new boto3 session, whose loader parses the service models (EC2's is
    megabytes of JSON) again: within this block all sessions share one loader, its models for
    the ``warm`` services parsed once up front, so forked runs inherit them. What the tests
    walk is the commands, not the model loading."""
    import botocore.loaders
    import botocore.session

    shared = botocore.loaders.create_loader()
    original = botocore.session.create_loader
    botocore.session.create_loader = lambda *args, **kwargs: shared
    try:
        for service in warm:  # a client made here leaves every file it needs in the cache
            botocore.session.Session().create_client(
                service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        yield
    finally:
        botocore.session.create_loader = original


def kill_at_random(argv: Sequence[str], delay: float, timeout: float = 120.0) -> tuple[bool, int]:
    """``python -m bundler ARGV`` in a subprocess, SIGKILLed after ``delay`` seconds.
    Returns (killed, exit code)."""
    proc = subprocess.Popen([sys.executable, "-m", "bundler", *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False, proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=timeout)
        return True, proc.returncode


# --------------------------------------------------------------------------- inspection


@dataclass
class Inspection:
    # complete-looking but wrong: must never happen
    wrong: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)  # .ami-bundler-* entries
    # parts with no manifest (visibly unfinished)
    incomplete: list[str] = field(default_factory=list)
    complete: list[str] = field(default_factory=list)   # verified bundles / identical images

    @property
    def ok(self) -> bool:
        return not self.wrong


def inspect_bundle_dir(dest: Path, ws: Workspace, *, decrypt: bool = False) -> Inspection:
    seen = Inspection()
    claimed: set[str] = set()
    names = sorted(os.listdir(dest))
    for name in names:
        if name.startswith(TEMP_MARK):
            seen.temporary.append(name)
        elif name.endswith(".manifest.xml"):
            path = dest / name
            try:
                parsed = api.read_manifest(path)
                claimed.update(p.filename for p in parsed.manifest.parts)
                api.verify(path, cert=ws.cert, private_key=ws.key if decrypt else None,
                           decrypt=decrypt)
            except BundlerError as exc:
                seen.wrong.append(f"{name}: {exc}")
                continue
            if ws.digest and parsed.manifest.digest != ws.digest:
                seen.wrong.append(f"{name}: digest {parsed.manifest.digest} is not the image's "
                                  f"{ws.digest}")
            else:
                seen.complete.append(name)
    for name in names:
        if ".part." in name and not name.startswith(TEMP_MARK) and name not in claimed:
            seen.incomplete.append(name)
    return seen


def inspect_image_dir(out: Path, ws: Workspace, name: str = "img") -> Inspection:
    seen = Inspection()
    for entry in sorted(os.listdir(out)):
        if entry.startswith(TEMP_MARK):
            seen.temporary.append(entry)
        elif entry == name:
            if sha1_file(out / entry) == ws.image_sha1:
                seen.complete.append(entry)
            else:
                seen.wrong.append(f"{entry}: differs from the original image")
        else:
            seen.wrong.append(f"{entry}: unexpected file in the unbundle destination")
    return seen


def clean_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
