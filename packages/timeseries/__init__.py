"""Time series: classification, forecasting and spatio-temporal forecasting on the shared attention core."""
