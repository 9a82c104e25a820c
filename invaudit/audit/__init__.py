"""The YAML audit suite (issue 9)."""
