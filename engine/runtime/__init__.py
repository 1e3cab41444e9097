"""Processes and machines: ranks and FSDP2 sharding (distributed), free disk space (diskspace), one writer per run directory (run_lock)."""
