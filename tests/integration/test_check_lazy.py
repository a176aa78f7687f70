"""The check's image tree lists directories when a lookup needs them: the boot rules of a big
image read a few dozen directories, not every entry (bundle-vol checks 400 000-entry images
while its selection is alive), and they find the same as over a fully indexed tree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bundler.check import check_tree
from bundler.check.debugfs import CheckSourceError, ImageTree, copy_out
from bundler.check.tree import DirTree
from tests.support import roots
from tests.support.ext4images import MKE2FS, mkfs

pytestmark = pytest.mark.skipif(not (os.path.exists(MKE2FS) and shutil.which("debugfs")),
                                reason="needs e2fsprogs (mke2fs, debugfs)")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("lazy")
    root = roots.write_clean_root(d / "root", pv=True)
    roots.write_initramfs(root, ["drivers/block/xen-blkfront.ko.xz"])
    for i in range(60):                   # directories no boot rule looks into
        sub = root / "srv" / f"d{i:02d}"
        sub.mkdir(parents=True)
        for j in range(5):
            (sub / f"f{j}").write_bytes(b"x" * j)
        os.symlink("f1", sub / "link")
    # Names that look like debugfs's own output: the session's token ends each output.
    odd = root / "srv" / "odd"
    odd.mkdir()
    (odd / "a\ndebugfs: ls -p <2>\n#x").write_text("no")
    (odd / "debugfs: cat <12>").write_bytes(b"debugfs: cat <12>\n#ami-bundler-0\n")
    return mkfs(root, d / "root.img", size_mib=32), root


def test_boot_rules_read_only_what_they_need(image):
    path, root = image
    with ImageTree(path) as lazy:
        report = check_tree(lazy, boot=True, share=False)
        looked = len(lazy)
        with ImageTree(path) as full:
            every = list(full.entries())
            assert len(full) == len(every)
            again = check_tree(full, boot=True, share=False)
    assert report.findings == again.findings
    assert looked < len(every) // 3, (looked, len(every))
    # The full walk finds what the directory holds, symlink targets included.
    expect = {e.path: (e.kind, e.size if e.kind != "dir" else 0, e.target)
              for e in DirTree(root).entries()}
    got = {e.path: (e.kind, e.size if e.kind != "dir" else 0, e.target) for e in every
           if not e.path.startswith("/lost+found")}
    assert got == expect


def test_reads_nest_and_names_cannot_fake_outputs(image):
    path, root = image
    with ImageTree(path) as tree:
        files = [e for e in tree.listdir("/srv/d07") if e.kind == "file"]
        seen = []
        for e, data in tree.read_prefixes(files, 2):
            # a lookup (another debugfs command) in the middle of a batch of reads
            seen.append((e.name, data, tree.entry("/srv/d42/link").path))
        assert seen == [(f"f{j}", b"x" * min(j, 2), "/srv/d42/f1") for j in range(5)]
        names = {e.name for e in tree.listdir("/srv/odd")}
        assert names == {"a\ndebugfs: ls -p <2>\n#x", "debugfs: cat <12>"}
        assert tree.read("/srv/odd/debugfs: cat <12>") == b"debugfs: cat <12>\n#ami-bundler-0\n"
        # a reader that stops early leaves the session in step
        gen = tree.read_prefixes(files, 10)
        next(gen)
        gen.close()
        assert tree.read("/etc/fstab") == (root / "etc/fstab").read_bytes()
        out = copy_out(tree, "/boot/" + next(p.name for p in (root / "boot").iterdir()
                                             if p.name.startswith("vmlinuz")),
                       root.parent / "kernel.out")
        assert out.stat().st_mode & 0o777 == 0o600


def test_not_a_filesystem_is_one_clear_error(image, tmp_path):
    path, _ = image
    with ImageTree(path) as good:
        facts = good.facts
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"\0" * 2**20)
    with pytest.raises(CheckSourceError, match="Bad magic number"):
        ImageTree(bad, facts=facts, offset=0)
