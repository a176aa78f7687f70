"""A real install, as a user runs it (its own process), imports neither boto3 nor s3transfer:
the product's AWS access is botocore's alone, and boto3's import would cost every command
~20 ms of start-up (unit/test_aws_sessions.py checks the sessions and clients themselves)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.support.cli import MIB, install_argv, keys_in, sparse_image

# bundler.cli.main as ``ami-bundler`` runs it, then what it imported (sys.modules: -X importtime
# does not see importlib.import_module, which loads the command modules).
MAIN = ("import sys, bundler.cli\ncode = bundler.cli.main(sys.argv[1:])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 's3transfer')))\n"
        "print('bundler.s3.upload' in sys.modules, 'botocore.session' in sys.modules)\n"
        "sys.exit(code)")


def test_a_real_install_imports_no_boto3(endpoint, s3, bucket, tmp_path, user_keys, ec2_keys):
    image = tmp_path / "disk.img"
    sparse_image(image, 6 * MIB)
    argv = [*install_argv(image, user_keys, endpoint, bucket=f"{bucket}/nb", ec2cert=ec2_keys[1],
                          name="disk"), "-n", f"nb-{uuid.uuid4().hex[:8]}", "--no-check"]
    out = subprocess.run([sys.executable, "-c", MAIN, *argv], capture_output=True, text=True,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "True True"], out.stdout
    assert "nb/disk.manifest.xml" in keys_in(s3, bucket, "nb/")
