"""Models run: worker processes and what they share with the daemon (slots, tallies)."""
