"""The README's "Typical use" block, run command by command against the local endpoint.

Only what cannot be the same on a test host is substituted: the paths of the build tree and
the output directory (which must not exist: the commands create it), a unique bucket name,
the endpoint and the EC2 certificate directory through the environment (as a user's shell
would set them), and ``--no-check`` for bundle-vol because the test tree has no kernel. The
"or all at once" alternative runs after the first AMI is deregistered (one AMI name).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import uuid
from pathlib import Path

import pytest

from bundler.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def typical_use() -> tuple[list[list[str]], list[list[str]]]:
    text = README.read_text()
    section = text.split("Typical use on a build host", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    first: list[list[str]] = []
    alternative: list[list[str]] = []
    current = first
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("# or"):
            current = alternative
        elif line.strip() and not line.startswith("#"):
            current.append(shlex.split(line))
    return first, alternative


@pytest.mark.skipif(shutil.which("mke2fs") is None and not Path("/sbin/mke2fs").exists(),
                    reason="needs e2fsprogs")
def test_readme_typical_use_runs(capsys, tmp_path, endpoint, monkeypatch, ec2_cert_dir, ec2):
    first, alternative = typical_use()
    assert [c[1] for c in first] == ["keygen", "bundle-vol", "upload-bundle", "register"]
    assert [c[1] for c in alternative] == ["install"]
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("web\n")
    (rootfs / "srv").mkdir()
    (rootfs / "srv" / "data").write_bytes(os.urandom(1 << 20))
    out_dir = tmp_path / "var-tmp-bundle"  # missing on purpose
    bucket = f"my-amis-{uuid.uuid4().hex[:12]}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "web.img").write_bytes(os.urandom(3 << 20))
    monkeypatch.chdir(work)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    # The stand-in EC2's certificates (on AWS the shipped ones serve): RegisterImage decrypts
    # with its keys.
    monkeypatch.setenv("AMI_BUNDLER_EC2_CERT_DIR", str(ec2_cert_dir))

    def substitute(argv: list[str]) -> list[str]:
        out = [re.sub(r"^my-amis(?=/|$)", bucket, a.replace("/build/rootfs", str(rootfs))
                      .replace("/var/tmp/bundle", str(out_dir))) for a in argv[1:]]
        if out[0] == "bundle-vol":
            out += ["--no-check", "--no-inherit"]
        return out

    image_id = None
    for argv in first:
        capsys.readouterr()
        code = main(substitute(argv))
        stdout, err = capsys.readouterr()
        assert code == 0, f"{shlex.join(argv)}: {err}"
        if argv[1] == "register":
            image_id = stdout.strip().splitlines()[-1]
    assert image_id and image_id.startswith("ami-")
    assert (out_dir / "web.manifest.xml").is_file()
    [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
    assert image["Name"] == "web-2026-11-27"
    assert main(["deregister", image_id]) == 0
    capsys.readouterr()
    for argv in alternative:
        code = main(substitute(argv))
        _, err = capsys.readouterr()
        assert code == 0, f"{shlex.join(argv)}: {err}"
