#!/usr/bin/env python3
"""Coverage-guided fuzzing of the manifest parser and the unbundle stream reader (atheris).

    .venv/bin/python scripts/fuzz.py manifest --seconds 60
    .venv/bin/python scripts/fuzz.py stream --seconds 60      # DecryptedStream + TarReader,
                                                              # and pipeline.unbundle with a
                                                              # fake PartSource
    .venv/bin/python scripts/fuzz.py unbundle --seconds 60    # only the latter
    .venv/bin/python scripts/fuzz.py qcow2 --seconds 60       # an image reader: qcow2, vmdk, vhd,
                                                              # vhdx, compressed (seeds: qemu-img)

Every input must end in a BundlerError with a one-line message, or in a verified result
(tests/support/harness.py states the contract); anything else is a crash that libFuzzer
saves as ``crash-*`` in the working directory. Bounded: ``--seconds``, a per-input timeout and an
RSS limit. Not run in CI (the property tests in tests/reliability are the CI subset).

Without atheris installed (``pip install atheris``), ``--engine random`` mutates the seeds
with Python's random module instead: slower to find deep bugs, same contract. The last line
printed is always ``fuzz: TARGET: N inputs in S s, 0 findings`` (or the finding).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_TARGETS = ("qcow2", "vmdk", "vhd", "vhdx", "compressed")


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from: a signed manifest, tar streams (plain and sparse)."""
    if target in IMAGE_TARGETS:
        from tests.support.image_harness import seeds as image_seeds

        return list(image_seeds(target))
    from bundler import keys as keylib
    from bundler.manifest import Manifest, PartEntry, part_names
    from bundler.tarwriter import MemberInfo, data_padding, end_of_archive, member_header
    from tests.support import harness

    def tar(data: bytes, regions=None, size=None) -> bytes:
        head = member_header(MemberInfo("img", size or len(data)), regions)
        body = head + data + data_padding(len(data))
        return body + end_of_archive(len(body))

    plain = tar(b"hello world" * 50)
    sparse = tar(b"z" * 700, [(0, 200), (5000, 500)], 9000)
    if target == "manifest":
        m = Manifest(name="img", user="123456789012", digest="1" * 40, size=1 << 20,
                     bundled_size=1 << 19,
                     ec2_encrypted_key="ab" * 64, user_encrypted_key="cd" * 64,
                     ec2_encrypted_iv="ef" * 64, user_encrypted_iv="01" * 64,
                     parts=[PartEntry(i, n, "2" * 40) for i, n in enumerate(part_names("img", 2))],
                     kernel_id="aki-1", block_device_mapping={"ami": "sda1"}, product_codes=["x"])
        return [keylib.sign_manifest(m, harness.fuzz_key()), m.to_unsigned_xml()]
    out = [b"\x02" + plain, b"\x02" + sparse, b"\x01" + harness.gzip_bytes(plain),
           b"\x00" + harness.aes(b"x")]
    unbundle_seeds = [len(b"hello world" * 50).to_bytes(3, "big") + plain,
                      (9000).to_bytes(3, "big") + sparse]
    if target == "unbundle":
        return unbundle_seeds
    return out + [b"\x03" + s for s in unbundle_seeds]


def target_function(target: str):
    from tests.support import harness

    if target in IMAGE_TARGETS:
        from tests.support.image_harness import check_image

        return lambda data: check_image(data, target)

    if target == "stream":
        def stream(data: bytes) -> str:
            # byte 0 % 4 == 3: the whole pipeline.unbundle; else a layer of the stream reader.
            if data and data[0] % 4 == 3:
                return harness.check_unbundle(data[1:])
            return harness.check_stream(data)
        return stream
    return harness.TARGETS[target]


def run_atheris(target: str, seconds: int, rss_mb: int, corpus: Path) -> int:
    import atheris

    # Instrument before anything imports bundler (seeds() does), or there is no coverage.
    with atheris.instrument_imports(include=["bundler"]):
        import bundler.deflate  # noqa: F401
        import bundler.images.compressed  # noqa: F401
        import bundler.images.qcow2  # noqa: F401
        import bundler.images.vhd  # noqa: F401
        import bundler.images.vhdx  # noqa: F401
        import bundler.images.vmdk  # noqa: F401
        import bundler.manifest  # noqa: F401
        import bundler.pipeline  # noqa: F401
        import bundler.tarreader  # noqa: F401
        import bundler.tarwriter  # noqa: F401
    if not any(corpus.iterdir()):
        for i, data in enumerate(seeds(target)):
            (corpus / f"seed-{i}").write_bytes(data)
    check = target_function(target)
    count = [0]

    def one_input(data: bytes) -> None:
        count[0] += 1
        check(data)

    args = [sys.argv[0], f"-max_total_time={seconds}", "-timeout=20", f"-rss_limit_mb={rss_mb}",
            "-print_final_stats=1", str(corpus)]
    atheris.Setup(args, one_input)
    started = time.monotonic()
    try:
        atheris.Fuzz()
    finally:  # only reached on a Python-level exit; libFuzzer prints "Done N runs" itself
        print(f"fuzz: {target}: {count[0]} inputs in {time.monotonic() - started:.0f} s",
              flush=True)
    return 0


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[pos % len(out)] = rng.randrange(256)
        elif op == 1:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 2 and out:
            del out[pos:pos + rng.randint(1, 64)]
        elif op == 3 and out:
            out[pos % len(out)] ^= 1 << rng.randrange(8)
        else:
            interesting = [b"\x00", b"\xff", b"7777777", b"\x80" + bytes(11), b"\n", b"<",
                           b"0" * 12]
            out[pos:pos] = rng.choice(interesting)
    return bytes(out)


def run_random(target: str, seconds: int, seed: int) -> int:
    from tests.support.harness import Finding

    check = target_function(target)
    rng = random.Random(seed)
    pool = seeds(target)
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < seconds:
        data = mutate(rng, rng.choice(pool))
        count += 1
        try:
            check(data)
        except (Finding, Exception) as exc:
            path = Path(f"crash-{target}-{count}.bin")
            path.write_bytes(data)
            print(f"fuzz: {target}: FINDING after {count} inputs: {type(exc).__name__}: {exc} "
                  f"(input saved to {path})", flush=True)
            return 1
        if len(pool) < 200 and rng.random() < 0.01:
            pool.append(data)
    print(f"fuzz: {target}: {count} inputs in {time.monotonic() - started:.0f} s, 0 findings",
          flush=True)
    return 0


def main() -> int:
    # The library warns about odd but harmless values (e.g. a non-12-digit account id) at
    # every input; that is not what a fuzz run is about.
    logging.disable(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=["manifest", "stream", "unbundle", *IMAGE_TARGETS])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--engine", choices=["atheris", "random"], default=None,
                        help="default: atheris when installed, else random")
    parser.add_argument("--rss-mb", type=int, default=2048,
                        help="memory limit per process (atheris)")
    parser.add_argument("--corpus", type=Path,
                        help="corpus directory (default: a fresh temporary one)")
    parser.add_argument("--seed", type=int, default=0, help="random engine seed")
    args = parser.parse_args()
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    if engine == "random":
        return run_random(args.target, args.seconds, args.seed)
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"ami-bundler-fuzz-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    os.chdir(corpus.parent)  # crash-* files land beside the corpus, not in the repository
    return run_atheris(args.target, args.seconds, args.rss_mb, corpus)


if __name__ == "__main__":
    sys.exit(main())
