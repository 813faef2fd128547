"""tools layer of vpr_ros (see doc/ARCHITECTURE.md)."""
