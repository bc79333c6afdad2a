"""The scaler: the render fleet follows the farm's queue (desired size per pool, drain, stop)."""
