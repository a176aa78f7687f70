#!/usr/bin/env python3
"""Chaos run for the S3 layer: faults, kill -9 and concurrent writers against a local endpoint.

    .venv/bin/python scripts/chaos_s3.py --seconds 120

Starts its own moto server and a fault-injecting proxy on 127.0.0.1 (ephemeral ports), then until
the time is up picks one of:

* a fault round: upload-bundle and download-bundle through 5xx storms, SlowDown, wrong ETags,
  truncated or corrupted bodies and stalled connections — each run must succeed with verified
  bytes or fail with one clear line;
* upload-bundle killed (SIGKILL) at a random moment, sometimes over an older bundle of the same
  name, then re-run: no visible manifest while a part is missing or wrong, the re-run completes
  and only re-sends what is not intact;
* install killed at a random moment, then re-run: same checks, and no stale parts or lock left;
* two upload-bundle runs of different bundles under one name at once: never an interleaved bundle.
* copy-bundle (into an empty place, or --force over another bundle) and upload-bundle --force
  killed right before one of their writes, then re-run: a visible manifest is always a whole bundle.

``run(seconds)`` returns the counts; ``data_lost`` and ``wrong_bytes_accepted`` must be 0 (the
script exits 1 otherwise). scripts/chaos.py calls ``run`` for the S3 half of its table.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.s3kit import (  # noqa: E402
    MotoEndpoint,
    Tally,
    World,
    concurrent_uploads,
    copy_kills,
    inspect_bundles,
    install_crash,
    make_world,
    one_line_error,
    replace_kills,
    run_cli,
    upload_crash,
)

log = logging.getLogger("chaos_s3")

# (action, pattern, method, extra rule arguments): one or two are drawn per fault round.
FAULTS = [
    ("status", r".*", None,
     {"probability": 0.3, "seconds": 3.0, "status": 500, "code": "InternalError"}),
    ("status", r".*", None,
     {"probability": 0.3, "seconds": 3.0, "status": 503, "code": "ServiceUnavailable"}),
    ("status", r"\.part\.", "PUT", {"probability": 0.5, "status": 503, "code": "SlowDown"}),
    ("status", r"\.part\.", "PUT", {"status": 503, "code": "SlowDown"}),  # persistent throttling
    ("etag", r"\.part\.", "PUT", {"probability": 0.3}),
    ("etag", r"\.part\.3$", "PUT", {}),  # persistent wrong ETag
    ("truncate", r"\.part\.", "GET", {"probability": 0.3}),
    ("short", r"\.(part\.[0-9]+|manifest\.xml)$", "GET", {"probability": 0.3}),
    ("corrupt", r"\.(part\.[0-9]+|manifest\.xml)$", "GET", {"probability": 0.3}),
    ("corrupt", r"\.part\.2$", "GET", {}),  # persistent corruption
    ("stall", r"\.part\.", None, {"probability": 0.2}),
    ("reset", r"\.part\.", "PUT", {"probability": 0.3}),
]


def fault_round(world: World, rng: random.Random, tally: Tally) -> None:
    from tests.support.bundles import make_fake_bundle

    bucket = world.new_bucket()
    bundle = make_fake_bundle(world.root / f"f-{bucket}", "flt", [128 * 1024] * 5,
                              world.signing_key)
    world.proxy.clear()
    for action, pattern, method, extra in rng.sample(FAULTS, rng.choice((1, 2))):
        world.proxy.add_rule(action, pattern, method=method, times=None, **extra)
    env = {**world.env, "AMI_BUNDLER_READ_TIMEOUT": "1"}
    common = ["--endpoint-url", world.proxy.url, "--max-attempts", "3", "--retry"]
    up = run_cli(["upload-bundle", "-b", f"{bucket}/f", "-m", str(bundle.manifest_path), *common],
                 env, timeout=300)
    tally.runs += 1
    seen = inspect_bundles(world.s3, bucket, "f/",
                           known={"flt.manifest.xml": bundle.manifest_bytes})
    for problem in seen.wrong:
        tally.wrong(f"upload under faults: {problem}")
    if up.returncode != 0:
        if not one_line_error(up.stderr):
            tally.notes.append(f"upload failed without one clear line: {up.stderr.strip()!r}")
        if seen.manifests:
            tally.wrong("upload failed but its manifest is visible")
        return
    dest = world.root / f"d-{bucket}"
    dest.mkdir()
    down = run_cli(["download-bundle", "-b", f"{bucket}/f", "-p", "flt", "-d", str(dest), *common],
                   env, timeout=300)
    tally.runs += 1
    if down.returncode != 0:
        if not one_line_error(down.stderr):
            tally.notes.append(f"download failed without one clear line: {down.stderr.strip()!r}")
        if (dest / "flt.manifest.xml").exists():
            tally.wrong("download failed but wrote the manifest")
        return
    for name, part in zip(bundle.part_names, bundle.parts, strict=True):
        if (dest / name).read_bytes() != part.data:
            tally.wrong(f"download accepted wrong bytes in {name}")
    if (dest / "flt.manifest.xml").read_bytes() != bundle.manifest_bytes:
        tally.wrong("download accepted a wrong manifest")


SCENARIOS = (
    (fault_round, 4),
    (lambda w, r, t: upload_crash(w, r, t), 3),
    (lambda w, r, t: install_crash(w, r, t, verify_image=r.random() < 0.25), 2),
    (concurrent_uploads, 1),
    # kill -9 right before one write of a copy (into an empty place or --force over another
    # bundle) or of a forced replacement; a step past the last write is an uninterrupted run.
    (lambda w, r, t: copy_kills(w, t, replace=r.random() < 0.7, steps=[r.randrange(7)]), 2),
    (lambda w, r, t: replace_kills(w, t, steps=[r.randrange(8)]), 2),
)


def run(seconds: float, *, seed: int | None = None) -> dict:
    """Chaos for about ``seconds`` (a scenario started before the deadline runs to its end)."""
    rng = random.Random(seed)
    tally = Tally()
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory(prefix="chaos-s3-") as tmp, MotoEndpoint() as endpoint, \
            FaultProxy(endpoint, seed=rng.randrange(1 << 30)) as proxy:
        world = make_world(endpoint, proxy, Path(tmp))
        funcs, weights = zip(*SCENARIOS, strict=True)
        while time.monotonic() < deadline:
            scenario = rng.choices(funcs, weights)[0]
            try:
                scenario(world, rng, tally)
            # A harness error is reported, not a crash of the run.
            except Exception as exc:  # noqa: BLE001
                tally.notes.append(f"harness: {type(exc).__name__}: {exc}")
        tally.faults_injected = proxy.faults_injected
    result = tally.as_dict()
    result["notes"] = tally.notes  # type: ignore[assignment]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.seconds, seed=args.seed)
    notes = result.pop("notes")
    width = max(len(k) for k in result)
    print(f"{'S3 chaos':<{width}}  count")
    for k, v in result.items():
        print(f"{k:<{width}}  {v:>5}")
    for note in notes:
        print(f"  note: {note}")
    return 1 if result["data_lost"] or result["wrong_bytes_accepted"] else 0


if __name__ == "__main__":
    sys.exit(main())
