"""ami-bundler: EC2 instance-store image bundles, byte-compatible with the classic AMI tools."""

__version__ = "0.1.0"
