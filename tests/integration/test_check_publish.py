"""install/register with --launch-permission all run check's public rules first (moto)."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from tests.support import roots
from tests.support.cli import keys_in, run
from tests.support.ext4images import mkfs
from tests.support.roots import dirty_tree

pytestmark = pytest.mark.skipif(not shutil.which("debugfs"), reason="needs e2fsprogs")


def install_args(image, key, cert, ec2cert, bucket, endpoint, *extra):
    return ["install", "-i", str(image), "-p", "disk", "-c", str(cert), "-k", str(key),
            "-u", "123456789012", "-r", "x86_64", "--ec2cert", str(ec2cert),
            "-b", f"{bucket}/pub", "-n", f"pub-{uuid.uuid4().hex[:8]}", "--endpoint-url",
            endpoint, *extra]


def test_install_public_refuses_a_leaky_image(capsys, endpoint, s3, ec2, bucket, tmp_path,
                                              user_keys, ec2_keys):
    key, cert = user_keys
    dirty = mkfs(dirty_tree(tmp_path / "dirty"), tmp_path / "dirty.img")
    args = install_args(dirty, key, cert, ec2_keys[1], bucket, endpoint,
                        "--launch-permission", "all")
    code, _, err = run(capsys, *args)
    assert code == 1
    assert "warning: install: share.ssh-host-key: /etc/ssh/ssh_host_ed25519_key" in err
    assert "--no-check" in err.strip().splitlines()[-1]
    assert not keys_in(s3, bucket, "pub/")                        # nothing uploaded
    assert not [i for i in ec2.describe_images(Owners=["self"])["Images"]
                if i["Name"].startswith("pub-")]


def test_register_public_checks_the_bundle_with_k(capsys, endpoint, s3, ec2, bucket, tmp_path,
                                                  user_keys, ec2_keys):
    key, cert = user_keys
    tree = roots.write_clean_root(tmp_path / "leaky", pv=True)
    roots.write_initramfs(tree, ["drivers/block/xen-blkfront.ko.xz"])
    for plant, rule_id in roots.PLANTED.values():
        if rule_id.startswith("share."):
            plant(tree)
    leaky = mkfs(tree, tmp_path / "leaky.img")
    # Not public: no sharing check, so the leaky image installs (it boots).
    code, _, err = run(capsys, *install_args(leaky, key, cert, ec2_keys[1], bucket, endpoint,
                                             "--no-register"))
    assert code == 0, err
    location = f"{bucket}/pub/disk.manifest.xml"
    code, out, err = run(capsys, "check", "--from-s3", "-m", location, "-k", str(key),
                         "--endpoint-url", endpoint, "--json", "--public")
    assert code == 1, err
    found = {f["id"] for f in json.loads(out)["findings"]}
    assert {"share.root-password", "share.ssh-host-key", "share.aws-credentials"} <= found
    assert not any(i.startswith("boot.") for i in found)
    base = ["register", location, "-n", "leaky", "--endpoint-url", endpoint,
            "--launch-permission", "all"]
    code, _, err = run(capsys, *base, "-k", str(key))
    assert code == 1
    assert "share.root-password" in err and "nothing was registered" in err
    assert all(i["Name"] != "leaky" for i in ec2.describe_images(Owners=["self"])["Images"])
    # Sharing with all needs block public access for AMIs off (it is on for new accounts).
    ec2.disable_image_block_public_access()
    try:
        code, _, err = run(capsys, *base, "--no-check")
    finally:
        ec2.enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing")
    assert code == 0, err
