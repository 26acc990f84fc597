"""cbldm.training: dataset generation and (with torch) the three networks and their training."""
