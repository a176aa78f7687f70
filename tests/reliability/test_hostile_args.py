"""Every command's parser and main paths, driven with generated hostile arguments: each run
ends in a result or in one ``PROG: error: …`` line (plus at most a hint) and a documented
exit code — never a traceback, whatever the flag gets (empty, huge, negative, wrong type,
wrong scheme, non-UTF-8, control characters, and paths that are files, directories, missing,
too long, or devices).

The other required flags get values that fail validation quickly (missing files, a closed
local port as the endpoint), so no case reaches real work, the network beyond 127.0.0.1, or
the running system's root filesystem.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import bundler.cli as cli
from bundler.cli import COMMAND_MODULE, build_parser
from tests.support.crashkit import one_model_loader

SEED = 15
PER_OPTION = 2  # hostile values tried per flag (seeded sample of the pool)
DOCUMENTED = {0, 1, 2, 3, 4, 5, 10, 12}
CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard port: refused at once
AWS_BASE = ["--endpoint-url", CLOSED_PORT_URL, "--max-attempts", "1", "--connect-timeout", "1",
            "--read-timeout", "1"]
SKIP_DESTS = {"help", "version", "manual", "debug", "verbose", "quiet", "json", "batch"}


def hostile_values(root: Path) -> list[str]:
    afile = root / "a-file"
    afile.write_bytes(b"not a key, an image or a manifest\n")
    adir = root / "a-dir"
    adir.mkdir(exist_ok=True)
    return [
        "", " ", "-", "--", "-1", "0", "9" * 40, "1e309", "nan", "abc", "x" * 5000,
        "127.0.0.1:5123", "ftp://x", "s3://", "s3://My_Bucket/a//b", "bad..dots/..", "192.168.5.4",
        "a\x01b", "\udcff\udcfe", "é/ü", "${HOME}", "*", "a=b=c", ",,,", "ami-",
        str(afile), str(adir), str(root / "missing" / "x"), "/dev/null", "/dev/zero", "/",
        str(afile) + "/below-a-file",
    ]


def required_base(parser: argparse.ArgumentParser, command: str,
                  root: Path) -> dict[str, list[str]]:
    """For each required flag (and positional), a value that fails fast."""
    missing = str(root / "does-not-exist.pem")
    base: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.dest in SKIP_DESTS or isinstance(action, argparse._HelpAction):
            continue
        if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
            value = missing
            if action.choices:
                value = str(next(iter(action.choices)))
            elif action.dest in ("bucket", "location", "destination_bucket"):
                value = "hostile-test-bucket/p"
            elif action.dest in ("name", "image_id"):
                value = "ami-0123456789abcdef0" if action.dest == "image_id" else "n"
            base[action.dest] = (([action.option_strings[0]] if action.option_strings else [])
                                 + [value])
    if command == "bundle-vol":  # never the live root: -v defaults to /
        base["volume"] = ["-v", missing]
    return base


def cases() -> list[tuple[str, str, str, int]]:
    """(command, option, pool index): a seeded sample, the same on every run."""
    rng = random.Random(SEED)
    out = []
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pool_size = len(hostile_values(Path("/tmp")))  # only its length is used here
    for command in sorted(COMMAND_MODULE):
        for action in sub.choices[command]._actions:
            if action.dest in SKIP_DESTS or isinstance(action,
                                                       (argparse._HelpAction,
                                                                argparse._VersionAction)):
                continue
            flag = action.option_strings[0] if action.option_strings else ""
            for index in rng.sample(range(pool_size), PER_OPTION):
                out.append((command, action.dest, flag, index))
    return out


CASES = cases()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module", autouse=True)
def shared_models() -> Iterator[None]:
    with one_model_loader():  # the service models parsed once, not in every case
        yield


def run_case(command: str, dest: str, flag: str, value: str, root: Path,
             monkeypatch) -> tuple[int, str]:
    parser = build_parser(command=command)
    sub = next(a for a in parser._actions
               if isinstance(a, argparse._SubParsersAction)).choices[command]
    base = required_base(sub, command, root)
    base.pop(dest, None)
    argv = [command]
    for words in base.values():
        argv += words
    action = next(a for a in sub._actions if a.dest == dest)
    if action.nargs == 0:
        argv.append(flag)
    elif flag:
        argv += [flag, value]
    else:
        argv.append(value)
    if (any(o.startswith("--endpoint-url") for a in sub._actions for o in a.option_strings)
            and dest != "endpoint_url"):
        argv += AWS_BASE
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code = cli.main(argv)  # anything but a return is a finding: the test fails with its traceback
    return code, stderr.getvalue()


@pytest.mark.parametrize(("command", "dest", "flag", "index"), CASES,
                         ids=[f"{c}-{d}-{i}" for c, d, _, i in CASES])
def test_hostile_argument(command, dest, flag, index, sandbox, monkeypatch):
    import bundler.s3.objects

    # Whole-object retries against the closed port would sleep up to a second per case; the
    # error line they end in is the same without the back-off.
    monkeypatch.setattr(bundler.s3.objects, "_backoff", lambda attempt: 0.0)
    monkeypatch.chdir(sandbox)
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    value = hostile_values(sandbox)[index]
    code, err = run_case(command, dest, flag, value, sandbox, monkeypatch)
    assert "Traceback" not in err, err
    assert code in DOCUMENTED, (code, err)
    if code != 0:
        lines = [line for line in err.splitlines() if not line.startswith(("warning: ", "WARNING"))]
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith("ami-bundler: error: "), err
        after = lines[lines.index(errors[0]) + 1:]
        assert len(after) <= 1 and all(line.startswith("hint: ") for line in after), err
