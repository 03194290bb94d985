"""The workflow's plumbing: config, layout, launch, runtime, devices, provenance."""
