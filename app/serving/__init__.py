"""Online serving: model registry (hot swap), catalog view, popular counters, the recommender."""
