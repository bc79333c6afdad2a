"""Shared machinery: config, logging, tracing, event store, bus and service runtime."""
