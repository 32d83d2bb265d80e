"""pstorefs: read the kernel's pstore partitions from userspace, as files."""

__version__ = "1.0.0"
