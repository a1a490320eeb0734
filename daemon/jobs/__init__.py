"""The queue and its workers: jobs in the spool, leases, the reaper, rendering through an engine, filing results."""
