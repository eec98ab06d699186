"""The network: the two towers as pure functions, their layers, the forms a layer is computed in, FLOPs."""
