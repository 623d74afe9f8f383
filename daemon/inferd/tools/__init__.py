"""Model tooling for the workstation: quantize, export, accuracy (never imported by the daemon)."""
