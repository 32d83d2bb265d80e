"""Command-line front ends: `pstorefs` (the mount) and `pstorectl` (offline)."""
