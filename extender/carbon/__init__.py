"""Live carbon intensity: the sources, and the loop that makes caps follow the grid."""
