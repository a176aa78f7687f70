"""Test helpers shared by the S3/EC2 integration tests: fault proxy, bundle builders."""
