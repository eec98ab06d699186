"""Where arrays live: the mesh and the tower split, the cluster join, cross-device traffic."""
