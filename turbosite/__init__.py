"""TurboSite Django project: settings from the environment, root URLs, accounts."""
