"""Training profiles: diffusion-pipe TOML schema, round-trip, validation, templates, store and history."""
