"""Stage 5: `vpr-eval` (retrieval and loop mode), its reports, intervals and model measures."""
