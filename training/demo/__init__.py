"""`vpr-train-demo`: the whole workflow on simulated gardens, default vs trained side by side."""
