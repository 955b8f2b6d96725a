"""dpdeck's engine: jobs, store, daemon, supervision, datasets, models. Heavy ML imports only in engine/trainer."""
