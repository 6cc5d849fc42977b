"""Example third-party overlayd driver."""
