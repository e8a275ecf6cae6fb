"""Data plumbing: object storage (`storage`), a local S3 server for tests and dev (`s3server`),
and the dataset stages built on them. Import the submodules you need; this package imports nothing."""
