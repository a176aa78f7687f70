from bundler.volume.fstab import ext4_options, retarget_root

UUID = "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9"

AL2 = """#
# /etc/fstab
# Created by anaconda
UUID=0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9   /     xfs   defaults,noatime,inode64,logbufs=8  1 1
/dev/xvdb\t/data\text4\tdefaults,nofail\t0\t2
tmpfs /tmp tmpfs size=1g 0 0
"""


def test_xfs_root_line_becomes_ext4_other_lines_kept():
    text, change = retarget_root(AL2, fstype="ext4", label=None, uuid=UUID)
    lines = text.split("\n")
    assert lines[:3] == AL2.split("\n")[:3]
    assert lines[3].split() == [f"UUID={UUID}", "/", "ext4", "defaults,noatime", "1", "1"]
    # the column layout of the line is kept
    assert lines[3].index("/ ") == AL2.split("\n")[3].index("/ ")
    assert lines[4:] == AL2.split("\n")[4:]
    assert change is not None
    assert change.old == AL2.split("\n")[3]
    assert change.new == lines[3]
    assert change.dropped_options == ("inode64", "logbufs=8")
    assert change.reasons == ("the image's filesystem is ext4, not xfs",)
    assert change.summary()["path"] == "/etc/fstab"


def test_rhel_device_root_gets_uuid_and_fsck_pass():
    src = ("/dev/mapper/rhel-root   /   xfs   defaults,uquota   0 0\n"
           "/dev/sda1 /boot xfs defaults 0 0\n")
    text, change = retarget_root(src, fstype="ext4", label="cloudimg-rootfs", uuid=UUID)
    first, second = text.split("\n")[:2]
    assert first.split() == [f"UUID={UUID}", "/", "ext4", "defaults,usrquota", "0", "1"]
    assert second == "/dev/sda1 /boot xfs defaults 0 0"
    assert len(change.reasons) == 2 and "not /dev/mapper/rhel-root" in change.reasons[0]


def test_label_style_kept_and_short_lines_completed():
    src = "LABEL=old / btrfs subvol=root,compress=zstd:1,discard=async\n"
    text, change = retarget_root(src, fstype="ext4", label="cloudimg-rootfs", uuid=UUID)
    assert text.split() == ["LABEL=cloudimg-rootfs", "/", "ext4", "discard", "0", "1"]
    assert change.dropped_options == ("subvol=root", "compress=zstd:1")


def test_matching_entry_untouched():
    for src in (f"UUID={UUID.upper()} / ext4 errors=remount-ro 0 1\n",
                "LABEL=cloudimg-rootfs\t/\tauto\tdefaults\t0 0\n",
                "# only comments\n", ""):
        assert retarget_root(src, fstype="ext4", label="cloudimg-rootfs", uuid=UUID) == (src, None)


def test_only_first_root_entry_and_commented_root_ignored():
    src = "#UUID=x / xfs defaults 0 0\nUUID=y / xfs defaults 0 0\n"
    text, change = retarget_root(src, fstype="ext4", label=None, uuid=UUID)
    assert text.startswith("#UUID=x / xfs defaults 0 0\n")
    assert text.split("\n")[1].split()[:3] == [f"UUID={UUID}", "/", "ext4"]


def test_ext4_options():
    assert ext4_options("defaults,noatime,nouuid,allocsize=64m,x-systemd.device-timeout=0,"
                        "context=system_u:object_r:root_t:s0") == (
        "defaults,noatime,x-systemd.device-timeout=0,context=system_u:object_r:root_t:s0",
        ["nouuid", "allocsize=64m"])
    assert ext4_options("inode64") == ("defaults", ["inode64"])
    assert ext4_options("gquota,pquota,grpquota") == ("grpquota,prjquota", [])


def test_crlf_file_keeps_its_line_ends():
    src = "# c\r\nUUID=x / xfs defaults 0 0\r\nproc /proc proc defaults 0 0\r\n"
    text, change = retarget_root(src, fstype="ext4", label=None, uuid=UUID)
    assert text == f"# c\r\nUUID={UUID} / ext4 defaults 0 1\r\nproc /proc proc defaults 0 0\r\n"
    assert change.new == f"UUID={UUID} / ext4 defaults 0 1"
