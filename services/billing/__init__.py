"""The billing service: prices, estimates, each job's cost and API keys' spend caps."""
