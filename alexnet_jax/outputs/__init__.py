"""What a run shows: figures, Figure 4, predictions, profiles."""
