"""Pipeline stages: each module holds one stage kind behind the interface in `base`."""
