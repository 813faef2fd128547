"""Stage 4: `vpr-export`, the model file the node loads (projection, calibrated point)."""
