"""ami-bundler: EC2 instance-store image bundles, byte-compatible with the classic AMI tools.

The library API (usable inside a pyfakefs fake filesystem)::

    import bundler
    result = bundler.bundle_image("root.img", "out/", cert=..., private_key=...,
                                  user="123456789012", ec2cert="cert-ec2.pem")
    bundler.verify("out/root.img.manifest.xml", cert=...)
    bundler.unbundle("out/root.img.manifest.xml", "key.pem", destination="restored/")
"""

__version__ = "0.1.0"

from .api import (
    VerifyResult,
    bundle_image,
    keygen,
    read_manifest,
    resolve_ec2_cert,
    unbundle,
    verify,
)
from .bundlerun import BundleKeys, BundleOptions, BundleResult
from .bundling import bundle
from .dirsink import DirectorySink
from .dirsource import DirectorySource
from .errors import BundlerError
from .manifest import Manifest, ParsedManifest, PartEntry, parse_manifest
from .parts import Part, PartSink, PartSource
from .source import open_image
from .unbundling import UnbundleResult

__all__ = [
    "BundleKeys", "BundleOptions", "BundleResult", "BundlerError", "DirectorySink",
    "DirectorySource",
    "Manifest", "ParsedManifest", "Part", "PartEntry", "PartSink", "PartSource", "UnbundleResult",
    "VerifyResult", "__version__", "bundle", "bundle_image", "keygen", "open_image",
    "parse_manifest", "read_manifest", "resolve_ec2_cert", "unbundle", "verify",
]
