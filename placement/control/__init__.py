"""The companion controller's pure core: breach tracking, the action ladder, eviction victims."""
