"""Stage 3: `vpr-train` (GCL/CL losses, checkpoints, torchrun, feature cache, pair hooks)."""
