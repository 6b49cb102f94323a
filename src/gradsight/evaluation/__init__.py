"""Can a map be trusted? Sanity checks by model randomisation, and deletion/insertion faithfulness."""
