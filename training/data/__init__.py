"""Workflow stages 1-2: recordings in (bags, TB-Places folders, folder pairs), ψ labels, pairs."""
