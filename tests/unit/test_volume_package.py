"""bundler.volume's package: its names load on first use, so a module that needs one of
bundle-vol's building blocks (the image check reads ``bootloader``, ``fstab``, ``partition``)
does not load the whole of bundle-vol with it (install runs the check while it starts up)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return set(out.split())


def test_the_image_check_does_not_load_bundle_vol() -> None:
    loaded = _modules_after("import bundler.check, bundler.cli.checking")
    assert "bundler.volume.fstab" in loaded  # what it does need
    assert not {"bundler.volume.bundle_vol", "bundler.volume.staging",
                "bundler.volume.selection", "bundler.volume.ext4feed"} & loaded


@pytest.mark.parametrize("name", ["VolumeConfig", "VolumeResult", "bundle_volume",
                                  "select_volume", "plan_size", "check_preconditions",
                                  "is_live_root"])
def test_the_package_names_are_bundle_vols(name: str) -> None:
    import bundler.volume as package
    from bundler.volume import bundle_vol

    assert getattr(package, name) is getattr(bundle_vol, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    import bundler.volume as package

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        package.nothing  # noqa: B018
