"""Views of collected results: pictures and profiles made from counts (flame graphs, folded stacks)."""
