"""Fast GPU kernels with a PyTorch reference for every op and one dispatch point."""
