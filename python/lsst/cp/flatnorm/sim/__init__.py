"""A simulated mosaic camera for demonstrating and testing the flat chain (not imported by the tasks)."""
