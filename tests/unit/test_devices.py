import pytest

from bundler.volume.devices import split_device

TABLE = [
    # NVMe (Nitro instances): namespace n1, partitions p<N>
    ("/dev/nvme0n1p1", "/dev/nvme0n1", 1),
    ("/dev/nvme1n1p12", "/dev/nvme1n1", 12),
    ("/dev/nvme0n1", "/dev/nvme0n1", None),
    ("nvme0n1p1", "nvme0n1", 1),
    # Xen, SCSI/SATA, virtio, IDE
    ("/dev/xvda1", "/dev/xvda", 1),
    ("/dev/xvda", "/dev/xvda", None),
    ("xvdf3", "xvdf", 3),
    ("/dev/sda1", "/dev/sda", 1),
    ("/dev/sdaa15", "/dev/sdaa", 15),
    ("sdb", "sdb", None),
    ("/dev/vda2", "/dev/vda", 2),
    ("/dev/hda1", "/dev/hda", 1),
    # device mapper: LVM, LUKS are whole devices; kpartx maps are partitions
    ("/dev/dm-0", "/dev/dm-0", None),
    ("dm-12", "dm-12", None),
    ("/dev/mapper/rhel-root", "/dev/mapper/rhel-root", None),
    ("/dev/mapper/luks-0b1c", "/dev/mapper/luks-0b1c", None),
    ("/dev/mapper/loop0p1", "/dev/mapper/loop0", 1),
    # loop, md, mmc, nbd
    ("/dev/loop0", "/dev/loop0", None),
    ("/dev/loop0p1", "/dev/loop0", 1),
    ("loop12p3", "loop12", 3),
    ("/dev/md0", "/dev/md0", None),
    ("/dev/md127", "/dev/md127", None),
    ("/dev/md0p1", "/dev/md0", 1),
    ("/dev/md/root", "/dev/md/root", None),
    ("/dev/mmcblk0p1", "/dev/mmcblk0", 1),
    ("/dev/mmcblk0", "/dev/mmcblk0", None),
    ("/dev/nbd0p2", "/dev/nbd0", 2),
    # unknown namings are whole devices, never an error
    ("/dev/root", "/dev/root", None),
    ("/dev/disk/by-uuid/0b1c", "/dev/disk/by-uuid/0b1c", None),
    ("/dev/sr0", "/dev/sr0", None),
]


@pytest.mark.parametrize("device,disk,partition", TABLE)
def test_split_device(device, disk, partition):
    name = split_device(device)
    assert (name.disk, name.partition) == (disk, partition)
    assert name.device == device
    assert name.summary() == {"device": device, "disk": disk, "partition": partition}


def test_source_identity_names_its_disk():
    from bundler.volume.imagefs import FsIdentity

    ident = FsIdentity("root", None, "xfs", "/dev/nvme0n1p1")
    assert ident.device_name.summary() == {"device": "/dev/nvme0n1p1", "disk": "/dev/nvme0n1",
                                           "partition": 1}
    assert FsIdentity(None, None, None, None).device_name is None
