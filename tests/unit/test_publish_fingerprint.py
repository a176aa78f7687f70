"""The fingerprint of a directory source (bundler.publish.tree): what bundle-vol would put in
the image changes it, what it leaves out does not (a small real tree: the walk uses dir fds)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bundler.publish.plan import VolumeOptions
from bundler.publish.tree import TreeProof, fingerprint_tree, known_bundle_digests

OPTS = VolumeOptions(exclude=("var/cache",))


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("web\n")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(5000))
    os.chmod(root / "usr" / "bin" / "tool", 0o755)
    (root / "var" / "cache").mkdir(parents=True)
    (root / "var" / "cache" / "junk").write_text("junk")
    os.symlink("../usr/bin/tool", root / "etc" / "tool-link")
    os.link(root / "etc" / "hostname", root / "etc" / "hostname.hard")
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(1_700_000_000 * 10**9,) * 2, follow_symlinks=False)
    return root


def digest(root: Path, opts: VolumeOptions = OPTS) -> str:
    return fingerprint_tree(root, opts, "web").digest


def _xattr(root: Path) -> None:
    try:
        os.setxattr(root / "usr" / "bin" / "tool", "user.test", b"1")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")


CHANGES: dict[str, Callable[[Path], None]] = {
    "content": lambda r: (r / "etc" / "hostname").write_text("db!\n"),
    "mode": lambda r: os.chmod(r / "usr" / "bin" / "tool", 0o700),
    "owner": lambda r: os.chown(r / "etc" / "hostname", 1000, 1000),
    "mtime": lambda r: os.utime(r / "usr" / "bin" / "tool", ns=(1, 1)),
    "symlink target": lambda r: (os.unlink(r / "etc" / "tool-link"),
                                 os.symlink("/usr/bin/tool", r / "etc" / "tool-link")),
    "a new file": lambda r: (r / "srv").mkdir(),
    "xattr": _xattr,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_what_reaches_the_image_changes_the_fingerprint(tmp_path: Path, change: str) -> None:
    root = make_tree(tmp_path / "root")
    before = digest(root)
    assert digest(root) == before  # stable
    CHANGES[change](root)
    assert digest(root) != before


def test_excluded_paths_and_directory_order_do_not_but_options_and_hard_links_do(
        tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    before = digest(a)
    (a / "var" / "cache" / "junk").write_text("other junk")
    assert digest(a) == before
    assert digest(a, dataclasses.replace(OPTS, size_mib=512)) != before
    assert digest(a, dataclasses.replace(OPTS, exclude=())) != before
    # The same entries as a copy instead of a hard link: another image.
    os.unlink(a / "etc" / "hostname.hard")
    (a / "etc" / "hostname.hard").write_text("web\n")
    for p in (a / "etc" / "hostname.hard", a / "etc"):
        os.utime(p, ns=(1_700_000_000 * 10**9,) * 2)
    assert digest(a) != before


def test_a_proof_matches_only_the_bundles_its_generation_records(tmp_path: Path) -> None:
    fp = fingerprint_tree(make_tree(tmp_path / "root"), OPTS, "web")

    def ami(generation: str, tree: str, bundle: str) -> dict:
        return {"Tags": [{"Key": "ami-bundler:generation", "Value": generation},
                         {"Key": "ami-bundler:image-digest", "Value": tree},
                         {"Key": "ami-bundler:bundle-digest", "Value": bundle}]}

    images = [ami("g1", fp.digest, "AA"), ami("g2", fp.digest, "bb"), ami("g1", "x" * 64, "cc")]
    assert known_bundle_digests(images, digest=fp.digest, generation="g1") == {"aa"}
    proof = TreeProof(fp, {"aa"})

    class Parsed:
        class manifest:  # noqa: N801 - the shape of ParsedManifest.manifest
            digest = "AA"

    assert proof.matches(Parsed) and proof.digest() == fp.digest  # type: ignore[arg-type]
    Parsed.manifest.digest = "bb"
    assert not proof.matches(Parsed)  # type: ignore[arg-type]
