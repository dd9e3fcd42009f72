"""Tables and plots a person reads."""
