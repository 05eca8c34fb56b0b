"""Carbon: intensity on the grid, carbon-aware cap policies, emissions, budgets, EU ETS prices."""
