"""Processes and machines: ranks, device names and FSDP2 sharding (distributed), free disk space and
write-error messages (diskspace), one writer per run directory (run_lock), and the JSON-lines reader
every layer uses (jsonl)."""
