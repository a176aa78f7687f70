"""The size estimate follows mke2fs.conf's inode ratio (pure)."""

from __future__ import annotations

from bundler.volume import mke2fsconf
from bundler.volume.imagefs import MIB, fs_overhead

DEBIAN = mke2fsconf.parse(mke2fsconf.BUILTIN)


def test_usage_types_follow_the_size():
    assert mke2fsconf.geometry(DEBIAN, 2 * MIB).ratio == 8192
    assert mke2fsconf.geometry(DEBIAN, 300 * MIB).ratio == 4096
    assert mke2fsconf.geometry(DEBIAN, 2048 * MIB).ratio == 16384
    assert mke2fsconf.geometry(DEBIAN, 5 * 1024 ** 4).ratio == 32768


def test_site_configuration_is_read():
    conf = mke2fsconf.parse("[defaults]\n inode_ratio = 8192 # dense\n[fs_types]\n"
                            " ext4 = {\n  inode_ratio = 65536\n }\n small = {\n }\n")
    assert mke2fsconf.geometry(conf, 300 * MIB).ratio == 65536     # ext4 over defaults
    assert mke2fsconf.geometry(conf, 2 * MIB).ratio == 65536       # floppy not defined


def test_small_images_count_four_times_the_inodes():
    # 300 MiB under "small": 76800 inodes of 256 bytes, not the 19200 the default ratio gives.
    assert fs_overhead(300 * MIB, 10, DEBIAN) - fs_overhead(300 * MIB, 10, mke2fsconf.parse(
        "[defaults]\n inode_ratio = 16384\n")) == (76800 - 19200) * 256
