"""Plugin module: importing it registers the classifier methods."""
