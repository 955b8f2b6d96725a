"""The profile checks, one module per area; `profiles.validate` runs them in order.

Every rule takes a `Ctx` (where findings are recorded) and plain TOML data, and never raises on bad content.
"""
