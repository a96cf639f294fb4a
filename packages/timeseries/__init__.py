"""Time series: classification (and, later, forecasting) on the shared attention core."""
