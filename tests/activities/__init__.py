"""Activity tests: real activities (Temporal ActivityEnvironment) against real servers."""
