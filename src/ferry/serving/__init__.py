"""The transport-free service layer: registry, metrics and the one predict path every protocol uses."""
