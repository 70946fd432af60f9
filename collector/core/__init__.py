"""The bottom layer: settings, clients, logging, metrics and the log model. Imports no other layer."""
