"""Test-only helpers that are too big for a test module and must not ship with the demo.

:mod:`.instrumented_provider` turns the example app's demo OAuth provider into the test
suite's yardstick: it logs every call and injects faults on request.
"""
