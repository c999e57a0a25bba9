"""HTTP routes, one router per concern: predict, models, health, metrics."""
