"""A seeded, deterministic simulated garden rendered from 6DOF poses."""
