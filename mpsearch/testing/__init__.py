"""Test support shipped with the package: contract suites that every registry entry must pass."""
