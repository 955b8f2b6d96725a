"""The job engine: the store, the daemon that supervises jobs, the per-job shim, and the client API."""
