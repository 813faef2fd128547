"""Training: graded labels from poses, GCL training, evaluation and export."""
