"""The companion controller in ``powercap serve``: power readings, the control loop, API calls."""
