"""Test-only helpers shared by several test modules (import as ``tests.helpers.<module>``)."""
