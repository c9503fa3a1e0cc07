"""Performance models: the host cost model, layers by shape, the whole-model profile."""
