"""docs/json.md names every key each command's ``--json`` result holds.

Every command runs once with ``--json`` (in this process, against the strict local AWS for the
S3 and EC2 ones) and the keys of its result — top level, and one level down in the objects
listed in NESTED — must each appear in backticks in that command's section of docs/json.md
("Results by command") or in its shared vocabulary table. A key added to a result without a
word in the docs fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bundler.cli import COMMAND_MODULE, main

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"
MKE2FS = shutil.which("mke2fs") or "/sbin/mke2fs"
# Objects whose keys are part of the schema (the others, like excluded_reasons, map data).
NESTED = {"ec2_certificate", "check", "staged", "registration", "image", "result", "source"}
# Commands whose result holds one object per region.
PER_REGION = {"install --regions": "regions"}


def documented() -> tuple[set[str], dict[str, set[str]]]:
    text = DOC.read_text()
    shared_part, _, by_command = text.partition("## Results by command")
    assert by_command, "docs/json.md has no 'Results by command' section"
    vocabulary = shared_part.split("## One vocabulary", 1)[1]
    shared = set(re.findall(r"`([a-z_][a-z0-9_.\[\]]*)`", vocabulary))
    sections: dict[str, set[str]] = {}
    for chunk in re.split(r"^### ", by_command, flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        keys = set(re.findall(r"`([a-z_][a-z0-9_.\[\]]*)`", body))
        for command in re.findall(r"`([a-z][a-z0-9 -]*)`", title):
            sections[command] = keys
    return shared, sections


def key_paths(data: dict, *, per_region: str | None = None) -> set[str]:
    out = set()
    for key, value in data.items():
        out.add(key)
        if key == per_region and isinstance(value, dict):
            for outcome in value.values():
                out.update(f"{key}.{k}" for k in outcome)
        elif key in NESTED and isinstance(value, dict):
            out.update(f"{key}.{k}" for k in value)
    return out


def documented_key(key: str, known: set[str], sections: dict[str, set[str]]) -> bool:
    """``key``, or for ``parent.child`` the child — named in this command's section, or in the
    section of the command whose result the parent holds (bundle-vol's ``check``)."""
    if key in known:
        return True
    parent, _, child = key.rpartition(".")
    return bool(parent) and (child in known or child in sections.get(parent, set()))


class Runner:
    def __init__(self, capsys) -> None:
        self.capsys = capsys
        self.results: dict[str, dict] = {}

    def __call__(self, label: str, *argv: str, codes: tuple[int, ...] = (0,)) -> dict:
        self.capsys.readouterr()
        code = main([*argv, "--json"])
        out, err = self.capsys.readouterr()
        assert code in codes, (label, code, err)
        data = json.loads(out)
        self.results[label] = data
        return data


def test_every_command_has_a_section():
    _, sections = documented()
    missing = sorted(set(COMMAND_MODULE) - set(sections))
    assert missing == [], f"docs/json.md has no section for {missing}"


@pytest.mark.skipif(not Path(MKE2FS).exists(), reason="e2fsprogs not installed")
def test_docs_name_every_key_of_every_result(capsys, tmp_path, endpoint, ec2_cert_dir, ec2_keys):
    run = Runner(capsys)
    run_all(run, tmp_path, endpoint, ec2_cert_dir, ec2_keys[1])
    shared, sections = documented()
    undocumented = {}
    for label, data in run.results.items():
        command = label.split()[0]
        known = shared | sections.get(label, set()) | sections.get(command, set())
        keys = key_paths(data, per_region=PER_REGION.get(label))
        missing = sorted(k for k in keys if not documented_key(k, known, sections))
        if missing:
            undocumented[label] = missing
    assert undocumented == {}, f"keys docs/json.md does not name: {undocumented}"
    assert set(COMMAND_MODULE) - {"boot-test"} <= {label.split()[0] for label in run.results}


def run_all(run: Runner, root: Path, endpoint: str, cert_dir: Path, ec2cert: Path) -> None:
    key, cert = root / "k.pem", root / "c.pem"
    run("keygen", "keygen", "--key", str(key), "--cert", str(cert))
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("doc\n")
    image = root / "fs.img"
    subprocess.run([MKE2FS, "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "4M"],
                   check=True, capture_output=True)
    bundle = root / "bundle"
    signing = ["-c", str(cert), "-k", str(key), "-u", "123456789012", "-r", "x86_64"]
    run("bundle-image", "bundle-image", "-i", str(image), *signing, "--ec2cert", str(ec2cert),
        "-d", str(bundle), "-p", "fs")
    manifest = bundle / "fs.manifest.xml"
    run("verify", "verify", str(manifest), "-c", str(cert), "-k", str(key), "--decrypt")
    run("inspect", "inspect", str(manifest), "-k", str(key))
    run("unbundle", "unbundle", "-m", str(manifest), "-k", str(key), "-d", str(root / "out"))
    run("inspect-image", "inspect-image", str(image))
    run("check", "check", str(image), codes=(0, 1))
    if shutil.which("qemu-system-x86_64") and shutil.which("sfdisk"):
        disk = root / "disk.img"
        with open(disk, "wb") as fh:
            fh.truncate(2 << 20)
        subprocess.run(["sfdisk", "-q", str(disk)], input="2048,,83\n", text=True, check=True,
                       capture_output=True)  # no boot loader: never boots, a result all the same
        run("boot-test", "boot-test", str(disk), "--timeout", "1", "--accel", "tcg", "--memory",
            "32", codes=(1,))
    migrated = root / "migrated"
    shutil.copytree(bundle, migrated)
    run("migrate-manifest", "migrate-manifest", "-m", str(migrated / "fs.manifest.xml"), "-c",
        str(cert), "-k", str(key), "--ec2cert", str(ec2cert))
    run("bundle-vol", "bundle-vol", "-v", str(tree), "-d", str(root / "vol"), "-p", "vol",
        *signing, "--ec2cert", str(ec2cert), "--no-inherit", "-s", "8", "--no-check")

    aws = ["--endpoint-url", endpoint]
    bucket = f"doc-{uuid.uuid4().hex[:12]}"
    run("upload-bundle", "upload-bundle", "-b", f"{bucket}/p", "-m", str(manifest), *aws)
    run("download-bundle", "download-bundle", "-b", f"{bucket}/p", "-p", "fs", "-d",
        str(root / "down"), "-c", str(cert), *aws)
    location = f"{bucket}/p/fs.manifest.xml"
    registered = run("register", "register", location, "-n", "doc-reg", "--no-check", *aws)
    run("deregister", "deregister", registered["image_id"], *aws)
    run("copy-bundle", "copy-bundle", "-b", f"{bucket}/p", "-d", f"{bucket}/copy", "-m",
        "fs.manifest.xml", "-c", str(cert), "-k", str(key), "--ec2cert", str(ec2cert), *aws)
    run("delete-bundle", "delete-bundle", "-b", f"{bucket}/copy", "-p", "fs", "-y", *aws)
    run("install", "install", "-i", str(image), "-p", "inst", *signing, "--ec2cert", str(ec2cert),
        "-b", f"{bucket}/inst", "-n", "doc-inst", "--no-check", *aws)
    run("install --regions", "install", "-i", str(image), "-p", "multi", *signing,
        "--regions", "us-east-1,eu-west-1", "--bucket-template", f"{bucket}-{{region}}",
        "--ec2cert-dir", str(cert_dir), "-n", "doc-multi", "--no-check", *aws)
    plan = root / "plan.toml"
    plan.write_text(f'name = "doc"\nregions = ["us-east-1"]\nbucket = "{bucket}-pub"\n'
                    f'[source]\nimage = "{image}"\n[bundle]\ncert = "{cert}"\n'
                    f'private_key = "{key}"\n[[accounts]]\nid = "123456789012"\n')
    run("publish", "publish", str(plan), "--ec2cert-dir", str(cert_dir), *aws)
    run("prune", "prune", "--plan", str(plan), "--keep", "1", *aws)
